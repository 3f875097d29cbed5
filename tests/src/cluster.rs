//! An in-process cluster: N real nodes in this process, each with its own data
//! directory and gRPC listener on 127.0.0.1. The first three (or fewer) are
//! the placement driver's members; the PD creates the initial shards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{ClientConfig, DirectClient, NodeClient, PdClient};
use cairn_node::raft::RaftSettings;
use cairn_node::{Node, NodeConfig};
use cairn_proto::{NodeId, RaftRole, ShardId};
use tokio::net::TcpListener;

use crate::wait::wait_until;

/// Raft timings for tests: quick elections, still safe on a loaded 2-core machine.
pub fn test_raft_settings() -> RaftSettings {
    RaftSettings {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 600,
        election_timeout_max_ms: 1200,
        ..RaftSettings::default()
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
    nodes: Vec<Option<Arc<Node>>>,
}

impl TestCluster {
    /// Starts `n` nodes hosting `shards` shards, each replicated on min(n, 3) nodes.
    pub async fn start(n: usize, shards: u32) -> anyhow::Result<TestCluster> {
        Self::start_with(n, shards, |_| {}).await
    }

    /// Like [`start`](Self::start), letting the caller adjust every node's config.
    pub async fn start_with(n: usize, shards: u32, adjust: impl Fn(&mut NodeConfig)) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        let members: Vec<(u64, String)> =
            addrs.iter().take(3).enumerate().map(|(i, a)| (i as u64 + 1, a.to_string())).collect();
        let mut configs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut c = NodeConfig {
                listen: *addr,
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                initial_pd: members.clone(),
                initial_shards: shards,
                heartbeat_interval_ms: 200,
                raft: test_raft_settings(),
                ..NodeConfig::default()
            };
            adjust(&mut c);
            configs.push(c);
        }
        let starts = configs.iter().cloned().zip(listeners).map(|(c, l)| Node::start_with_listener(c, l));
        let nodes = futures::future::try_join_all(starts).await?;
        let cluster = TestCluster { dir, configs, nodes: nodes.into_iter().map(Some).collect() };
        wait_until("the PD to create the initial shards", Duration::from_secs(60), || async {
            (cluster.leaders().len() >= shards as usize).then_some(())
        })
        .await?;
        cluster.wait_for_leaders(Duration::from_secs(30)).await?;
        cluster.wait_for_replicas(Duration::from_secs(30)).await?;
        // The PD spreads leaders (and replicas) right after start: a test that
        // talks to "the leader" while that happens races it (NOT_LEADER from a
        // node the test just found leading). Start from a settled cluster.
        let pd = cluster.pd_client()?;
        wait_until("the PD to finish its first balancing", Duration::from_secs(60), || async {
            let status = pd.rebalance_status().await.ok()?;
            (status.balanced && pd.list_operators().await.ok()?.is_empty()).then_some(())
        })
        .await?;
        cluster.wait_for_leaders(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Waits until every running node hosts every replica the PD lists for it
    /// (a shard elects its leader once a quorum of its first replicas exists;
    /// the last one may be created a heartbeat later).
    pub async fn wait_for_replicas(&self, timeout: Duration) -> anyhow::Result<()> {
        let pd = self.pd_client()?;
        wait_until("every listed replica to exist", timeout, || async {
            let (routes, _) = pd.list_shards(&cairn_proto::KeyRange::full(), 0).await.ok()?;
            let all = self.running().all(|n| {
                routes
                    .iter()
                    .filter(|r| r.descriptor.replicas.iter().any(|d| d.node == n.id()))
                    .all(|r| n.shared.registry.get(r.descriptor.id).is_some())
            });
            all.then_some(())
        })
        .await
    }

    /// Starts one more node, configured like the others: it registers with
    /// the PD as a new node (it is not a PD member) and gets the next id.
    /// Returns its index.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let i = self.nodes.len();
        let mut config = self.configs[0].clone();
        config.listen = listener.local_addr()?;
        config.data_dir = self.dir.path().join(format!("node-{}", i + 1));
        let node = Node::start_with_listener(config.clone(), listener).await?;
        self.configs.push(config);
        self.nodes.push(Some(node));
        Ok(i)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `i` (0-based), if running.
    pub fn node(&self, i: usize) -> Option<&Arc<Node>> {
        self.nodes[i].as_ref()
    }

    pub fn running(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes.iter().flatten()
    }

    pub fn addr(&self, i: usize) -> String {
        self.configs[i].listen.to_string()
    }

    /// A routing client seeded with the first running node.
    pub fn client(&self) -> anyhow::Result<DirectClient> {
        let seed = self.running().next().ok_or_else(|| anyhow::anyhow!("no node running"))?.addr().to_string();
        Ok(DirectClient::new(seed, ClientConfig::default())?)
    }

    /// The PD members' addresses.
    pub fn pd_endpoints(&self) -> Vec<String> {
        self.configs[0].pd_endpoints()
    }

    pub fn pd_client(&self) -> anyhow::Result<PdClient> {
        Ok(PdClient::new(self.pd_endpoints(), ClientConfig::default())?)
    }

    pub fn node_client(&self, i: usize) -> anyhow::Result<NodeClient> {
        Ok(NodeClient::new(&self.addr(i), &ClientConfig::default())?)
    }

    /// Waits until every running node sees a leader for each of its shards, and
    /// that leader is one of the running nodes and says it leads.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until("a leader for every shard", timeout, || async {
            let leaders = self.leaders();
            let running: Vec<NodeId> = self.running().map(|n| n.id()).collect();
            let all = self.running().all(|n| {
                n.shared.shard_statuses().iter().all(|s| {
                    s.leader.map(|l| running.contains(&l) && leaders.get(&s.descriptor.id) == Some(&l)).unwrap_or(false)
                })
            });
            all.then_some(())
        })
        .await
    }

    /// Shard -> node that currently says it leads it.
    pub fn leaders(&self) -> BTreeMap<ShardId, NodeId> {
        let mut out = BTreeMap::new();
        for n in self.running() {
            for s in n.shared.shard_statuses() {
                if s.role == RaftRole::Leader {
                    out.insert(s.descriptor.id, n.id());
                }
            }
        }
        out
    }

    /// The index of the running node that leads the most shards.
    pub fn busiest_leader(&self) -> Option<usize> {
        let leaders = self.leaders();
        (0..self.nodes.len())
            .filter_map(|i| self.nodes[i].as_ref().map(|n| (i, n.id())))
            .max_by_key(|(_, id)| leaders.values().filter(|n| *n == id).count())
            .map(|(i, _)| i)
    }

    /// Writes one document to `shard` through whichever running node leads it
    /// now, re-sent with the same session (applied once) until acknowledged:
    /// a young or loaded group's leadership can move between finding its
    /// leader and writing to it (NOT_LEADER).
    pub async fn put_via_leader(
        &self,
        shard: ShardId,
        session: cairn_proto::Session,
        key: &[u8],
        value: &[u8],
    ) -> anyhow::Result<u64> {
        wait_until("a write to be acknowledged by the leader", Duration::from_secs(30), || async {
            let (i, replica) = (0..self.len()).find_map(|i| {
                let replica = self.node(i)?.shared.registry.get(shard)?;
                replica.group.is_leader().then_some((i, replica))
            })?;
            let route = cairn_proto::Route { shard, epoch: replica.descriptor().epoch };
            match self.node_client(i).ok()?.put(route, session, key, value, None).await {
                Ok(version) => Some(version),
                Err(e) => {
                    tracing::info!(error = %e, "write not acknowledged; sending it again");
                    None
                }
            }
        })
        .await
    }

    /// Stops node `i` abruptly, as a SIGKILL would.
    pub async fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.crash().await;
        }
    }

    /// Stops node `i` cleanly.
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Stops every running node cleanly, all at once (as a SIGTERM to each).
    pub async fn stop_all_together(&mut self) {
        let nodes: Vec<Arc<Node>> = self.nodes.iter_mut().filter_map(Option::take).collect();
        futures::future::join_all(nodes.iter().map(|n| n.shutdown())).await;
    }

    /// Restarts node `i` from its data directory on its old address.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let config = self.configs[i].clone();
        // The old incarnation's tasks release the port and the database file
        // lock as they wind down; retry until both are free.
        let node = wait_until("the node to restart", Duration::from_secs(20), || {
            let config = config.clone();
            async move {
                let listener = TcpListener::bind(config.listen).await.ok()?;
                match Node::start_with_listener(config, listener).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        eprintln!("restart attempt failed: {e}");
                        None
                    }
                }
            }
        })
        .await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }
}
