//! A running node: opens its database, bootstraps or reloads its shards, starts
//! one Raft group per hosted shard, and serves gRPC until shut down.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cairn_proto::{
    Epoch, KeyRange, NodeId, NodeStats, ReplicaDescriptor, ReplicaRole, ShardDescriptor, ShardId, ShardStatus,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cairn_client::{ClientConfig, PdClient};
use cairn_proto::ClusterSettings;
use cairn_proto::net::Net;

use crate::config::NodeConfig;
use crate::pd::{BootstrapSettings, PD_SHARD, PdRuntime};
use crate::raft::{GroupError, RaftGroup, RaftSettings};
use crate::shard::kv::Kv;
use crate::shard::{Registry, Replica};
use crate::storage::codec::{decode, encode};
use crate::storage::tables::{NODE_RECORD, NodeRecord, ShardRecord};
use crate::storage::{Storage, StorageConfig, StorageError, WriteOp};
use crate::transport::Transport;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "cairn.redb";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("data directory belongs to node {found}, but initial-pd makes this address node {configured}")]
    Identity { found: u64, configured: u64 },
    #[error("the placement driver refused this node: {0}")]
    Refused(cairn_proto::ApiError),
    #[error("stopped before the placement driver answered")]
    Cancelled,
    #[error("shard {shard}: {source}")]
    Group { shard: ShardId, source: GroupError },
    /// A replica of the shard was destroyed here at `tombstone`; creating one
    /// for a configuration that is not newer is refused.
    #[error("shard {shard} was destroyed here at conf_ver {tombstone}; a replica at conf_ver {requested} is stale")]
    Tombstoned { shard: ShardId, tombstone: u64, requested: u64 },
    /// The replica's configuration is newer than the one a destroy named.
    #[error("shard {shard}'s replica is at conf_ver {local}, newer than {allowed}; not destroyed")]
    ReplicaNewer { shard: ShardId, local: u64, allowed: u64 },
    #[error("shard {0} is already hosted here")]
    AlreadyHosted(ShardId),
}

impl NodeError {
    fn from_storage(e: StorageError) -> Self {
        match e {
            StorageError::Tombstoned { shard, tombstone, requested } => {
                NodeError::Tombstoned { shard: ShardId(shard), tombstone, requested }
            }
            StorageError::ReplicaNewer { shard, local, allowed } => {
                NodeError::ReplicaNewer { shard: ShardId(shard), local, allowed }
            }
            StorageError::ShardExists(shard) => NodeError::AlreadyHosted(ShardId(shard)),
            e => NodeError::Storage(e),
        }
    }
}

/// What the services of a node share.
pub struct NodeShared {
    pub id: NodeId,
    pub addr: String,
    pub storage: Arc<Storage>,
    pub registry: Arc<Registry>,
    pub transport: Arc<Transport>,
    pub kv: Kv,
    /// The PD runtime; it acts while this node hosts shard 0 (a PD member).
    pub pd: Arc<PdRuntime>,
    /// Client of the PD: the endpoints this node was started with, widened to
    /// its peers when those stop answering ([`NodeShared::widen_pd_endpoints`]).
    pd_client: RwLock<PdClient>,
    pub cluster_id: u64,
    /// The network this node dials peers and the PD over.
    pub net: Net,
    /// Wakes the heartbeat loop to report now: a PD command took effect, so
    /// the PD can order the operator's next step without waiting an interval.
    pub report_soon: tokio::sync::Notify,
}

/// How long shutdown waits for a background loop to notice the cancel
/// (more than the PD agent's drain of commands in flight).
const BACKGROUND_STOP_GRACE: Duration = Duration::from_secs(5);

/// Most PD endpoints a node's client keeps.
const PD_ENDPOINTS_MAX: usize = 16;

/// The endpoints a node's PD client should have: the configured ones, then
/// (any node forwards PD requests) the peers it shares shards with, without
/// itself, at most [`PD_ENDPOINTS_MAX`].
pub fn pd_endpoints_with_peers(configured: &[String], peers: &[String], me: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in configured.iter().chain(peers) {
        if addr != me && !addr.is_empty() && !out.contains(addr) && out.len() < PD_ENDPOINTS_MAX {
            out.push(addr.clone());
        }
    }
    if out.is_empty() { configured.to_vec() } else { out }
}

impl NodeShared {
    /// The node's PD client (cheap clone).
    pub fn pd_client(&self) -> PdClient {
        self.pd_client.read().expect("pd client lock").clone()
    }

    /// Adds the peers this node shares shards with to its PD endpoints, for
    /// when the configured ones stopped answering (a `--pd` node drained and
    /// removed). Returns the new endpoints if they changed.
    pub fn widen_pd_endpoints(&self, configured: &[String]) -> Option<Vec<String>> {
        let mut peers: Vec<String> = Vec::new();
        for replica in self.registry.all() {
            for r in replica.descriptor().replicas {
                if !peers.contains(&r.addr) {
                    peers.push(r.addr);
                }
            }
        }
        peers.sort();
        let wanted = pd_endpoints_with_peers(configured, &peers, &self.addr);
        let mut client = self.pd_client.write().expect("pd client lock");
        if client.endpoints() == wanted {
            return None;
        }
        let widened = PdClient::new(&wanted, client.config().clone()).ok()?;
        *client = widened;
        Some(wanted)
    }

    /// Creates a replica of a shard on this node at run time and starts its Raft
    /// group. `members`, when given, initialises a new group with those voters;
    /// a replica joining an existing group starts empty and is filled by its
    /// leader (log or snapshot).
    ///
    /// The replica is refused ([`NodeError::Tombstoned`]) when a replica of the
    /// shard was destroyed here at a `conf_ver` at least `descriptor.epoch.conf_ver`
    /// (checked in the transaction that creates the record), and
    /// ([`NodeError::AlreadyHosted`]) when the shard has a record here. The record
    /// is stored with `conf_ver` 0 whatever the descriptor says: the group's
    /// membership entries (each applied one adds 1, from the initial one on) or
    /// the snapshot its leader sends bring it to the group's value, so counting
    /// starts from zero.
    pub async fn create_replica(
        &self,
        mut descriptor: ShardDescriptor,
        members: Option<&[(NodeId, String)]>,
        config: &NodeConfig,
    ) -> Result<(), NodeError> {
        let shard = descriptor.id;
        if self.registry.get(shard).is_some() {
            return Err(NodeError::AlreadyHosted(shard));
        }
        let requested = descriptor.epoch.conf_ver;
        descriptor.epoch.conf_ver = 0;
        let record = ShardRecord {
            descriptor,
            data_id: 0,
            applied_index: 0,
            applied_log_id: None,
            membership: None,
            stats: Default::default(),
        };
        self.storage
            .call(|done| WriteOp::CreateShardUnlessTombstoned { record, requested_conf_ver: requested, done })
            .await
            .map_err(NodeError::from_storage)?;
        let record = self.storage.shard_record(shard)?.ok_or(StorageError::ShardMissing(shard.0))?;
        let replica = start_replica(self.id, record, &self.storage, &self.transport, &config.raft).await?;
        if let Some(members) = members {
            replica.group.initialize(members).await.map_err(|source| NodeError::Group { shard, source })?;
        }
        self.registry.insert(replica);
        tracing::info!(%shard, conf_ver = requested, initialised = members.is_some(), "replica created");
        Ok(())
    }

    /// Stops a replica and deletes it from this node: its record, log and
    /// metadata at once, its documents in the background. Leaves a tombstone at
    /// the replica's own `conf_ver`.
    pub async fn destroy_replica(&self, shard: ShardId) -> Result<(), NodeError> {
        if let Some(replica) = self.registry.remove(shard) {
            replica.group.shutdown().await;
        }
        self.storage
            .call(|done| WriteOp::DestroyShard {
                shard: shard.0,
                tombstone_conf_ver: 0,
                max_conf_ver: None,
                destroyed_at_ms: now_ms(),
                done,
            })
            .await
            .map_err(NodeError::from_storage)?;
        crate::metrics::replica_destroyed();
        tracing::info!(%shard, "replica destroyed");
        Ok(())
    }

    /// Destroys the replica of `shard` for a configuration at `conf_ver`: only
    /// if the replica's own `conf_ver` is at most that ([`NodeError::ReplicaNewer`]
    /// otherwise), leaving a tombstone at `conf_ver` in the transaction that
    /// deletes the record. The check is made before the group stops and again in
    /// that transaction (the group may apply a membership entry meanwhile); if
    /// the second one declines, the group is started again from its intact
    /// record. Whether this node may destroy (not the leader)
    /// is the caller's decision.
    pub async fn destroy_replica_at(
        &self,
        shard: ShardId,
        conf_ver: u64,
        config: &NodeConfig,
    ) -> Result<(), NodeError> {
        let Some(replica) = self.registry.get(shard) else {
            return Err(NodeError::Storage(StorageError::ShardMissing(shard.0)));
        };
        let local = replica.conf_ver();
        if local > conf_ver {
            return Err(NodeError::ReplicaNewer { shard, local, allowed: conf_ver });
        }
        drop(replica);
        if let Some(replica) = self.registry.remove(shard) {
            replica.group.shutdown().await;
        }
        let destroyed = self
            .storage
            .call(|done| WriteOp::DestroyShard {
                shard: shard.0,
                tombstone_conf_ver: conf_ver,
                max_conf_ver: Some(conf_ver),
                destroyed_at_ms: now_ms(),
                done,
            })
            .await
            .map_err(NodeError::from_storage);
        match destroyed {
            Ok(()) => {
                crate::metrics::replica_destroyed();
                tracing::info!(%shard, conf_ver, "replica destroyed; tombstone left");
                Ok(())
            }
            Err(e @ NodeError::ReplicaNewer { .. }) => {
                // The record is intact: serve it again.
                if let Some(record) = self.storage.shard_record(shard)? {
                    let replica = start_replica(self.id, record, &self.storage, &self.transport, &config.raft).await?;
                    self.registry.insert(replica);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    pub fn stats(&self) -> NodeStats {
        let s = self.storage.stats();
        NodeStats {
            node_id: self.id,
            addr: self.addr.clone(),
            shard_count: self.registry.len() as u64,
            fsyncs: s.fsyncs,
            log_entries_persisted: s.log_entries_persisted,
            write_batches: s.durable_commits + s.nondurable_commits,
            db_bytes: self.storage.file_bytes(),
        }
    }

    /// Statuses of the data shards this node hosts (not the PD's shard 0).
    pub fn shard_statuses(&self) -> Vec<ShardStatus> {
        self.registry
            .all()
            .iter()
            .filter(|r| r.shard() != PD_SHARD)
            .map(|r| {
                let st = r.group.status();
                ShardStatus {
                    descriptor: r.descriptor(),
                    role: st.role,
                    leader: st.leader,
                    leader_addr: st.leader_addr,
                    term: st.term,
                    applied_index: st.applied_index,
                    last_log_index: st.last_log_index,
                }
            })
            .collect()
    }
}

/// Starts the Raft group of a replica whose record is stored.
async fn start_replica(
    node: NodeId,
    record: ShardRecord,
    storage: &Arc<Storage>,
    transport: &Arc<Transport>,
    raft: &RaftSettings,
) -> Result<Arc<Replica>, NodeError> {
    let shard = record.shard();
    let (tx, rx) = watch::channel(record.descriptor);
    let group = RaftGroup::start(node, shard, storage.clone(), transport.clone(), raft, tx)
        .await
        .map_err(|source| NodeError::Group { shard, source })?;
    Ok(Arc::new(Replica { group, descriptor: rx }))
}

pub struct Node {
    pub shared: Arc<NodeShared>,
    pub config: NodeConfig,
    cancel: CancellationToken,
    /// Cuts every open gRPC connection (crash, or a shutdown that overran).
    kill: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
    metrics_server: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

/// The PD client of a node: patient enough to ride out a PD election.
fn pd_client_config(net: &Net) -> ClientConfig {
    ClientConfig {
        net: net.clone(),
        request_timeout: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(15),
        ..ClientConfig::default()
    }
}

/// The PD endpoints this node talks to: its own address is left out (unless
/// it is the only one), since a node that is no longer a PD member would
/// otherwise forward PD requests to itself.
fn pd_endpoints_but_self(config: &NodeConfig) -> Vec<String> {
    let all = config.pd_endpoints();
    let me = config.advertise_addr();
    let others: Vec<String> = all.iter().filter(|a| **a != me).cloned().collect();
    if others.is_empty() { all } else { others }
}

/// The wall clock (a simulation's, in the turmoil test tier).
fn now_ms() -> u64 {
    cairn_proto::sim::now_ms()
}

impl Node {
    /// Binds `config.listen` and starts the node.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| NodeError::Bind { addr: config.listen.to_string(), source })?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts the node serving on an already bound listener.
    pub async fn start_with_listener(config: NodeConfig, listener: TcpListener) -> Result<Arc<Node>, NodeError> {
        Self::start_with_incoming(config, crate::service::tcp_incoming(listener)).await
    }

    /// Starts the node serving the connections `incoming` yields (a simulated
    /// network's listener in the turmoil test tier; see [`NodeConfig::net`]
    /// for the dialing side).
    ///
    /// Identity: a data directory keeps the node id it was given. A new data
    /// directory takes its id from `initial-pd` when this node's address is
    /// listed there (a PD member), else registers with the PD for one, waiting
    /// until the PD answers.
    pub async fn start_with_incoming(
        config: NodeConfig,
        incoming: crate::service::Incoming,
    ) -> Result<Arc<Node>, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let addr = config.advertise_addr();
        let cancel = CancellationToken::new();
        let pd_client = PdClient::new(pd_endpoints_but_self(&config), pd_client_config(&config.net))
            .map_err(|e| NodeError::Config(format!("pd endpoints: {e}")))?;
        let storage_config = StorageConfig { cache_bytes: config.cache_bytes, ..Default::default() };
        if config.fault_injection {
            tracing::warn!(
                "fault injection is on: link faults accepted, unsynced writes lost on a crash (testing only)"
            );
            crate::test_hooks::lose_unsynced_writes(&config.data_dir.join(DB_FILE));
        }
        let storage = Storage::open(&config.data_dir.join(DB_FILE), storage_config)?;
        let record = Self::identity(&config, &storage, &pd_client, &cancel).await?;
        let id = NodeId(record.node_id);
        let transport = Transport::new(id.0, config.transport.clone(), config.net.clone(), cancel.child_token());
        let registry = Arc::new(Registry::default());

        let pd_fresh = Self::bootstrap_pd(&config, &storage, &record).await?;
        for record in storage.shard_records()? {
            registry.insert(start_replica(id, record, &storage, &transport, &config.raft).await?);
        }
        if pd_fresh {
            let members: Vec<(NodeId, String)> =
                config.initial_pd.iter().map(|(id, a)| (NodeId(*id), a.clone())).collect();
            let replica = registry.get(PD_SHARD).expect("the PD shard was just created");
            replica.group.initialize(&members).await.map_err(|source| NodeError::Group { shard: PD_SHARD, source })?;
            let r = NodeRecord { bootstrapped: true, ..record.clone() };
            storage.call(|done| WriteOp::PutNodeMeta { key: NODE_RECORD, value: encode(&r), done }).await?;
        }
        // Every node runs the PD runtime; it acts while the node hosts a
        // replica of shard 0 (RFC 004), so a node that joins the PD becomes a
        // member without a restart.
        let pd = {
            let settings = ClusterSettings {
                replication_factor: config.bootstrap_replication_factor(),
                max_node_down_time_ms: config.max_node_down_time_ms,
                ..ClusterSettings::default()
            };
            let bootstrap = BootstrapSettings {
                members: config.initial_pd.iter().map(|(id, a)| (NodeId(*id), a.clone())).collect(),
                initial_shards: config.initial_shards,
                settings,
            };
            PdRuntime::new(id, addr.clone(), registry.clone(), storage.clone(), bootstrap, config.net.clone())
        };
        let pd_member = registry.get(PD_SHARD).is_some();
        tracing::info!(node = id.0, %addr, shards = registry.len(), pd_member, "node started");

        let kv = Kv {
            registry: registry.clone(),
            storage: storage.clone(),
            limits: config.limits.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        };
        let shared = Arc::new(NodeShared {
            id,
            addr,
            storage,
            registry,
            transport,
            kv,
            pd: pd.clone(),
            pd_client: RwLock::new(pd_client),
            cluster_id: record.cluster_id,
            net: config.net.clone(),
            report_soon: tokio::sync::Notify::new(),
        });
        let kill = CancellationToken::new();
        let server = crate::service::serve(shared.clone(), incoming, &config, cancel.clone(), kill.clone());
        let mut background = crate::shard::quiesce::spawn(shared.clone(), &config.raft, cancel.clone());
        background.push(crate::shard::snapshots::spawn(shared.clone(), &config.raft, cancel.clone()));
        background.push(pd.spawn(cancel.clone()));
        background.push(crate::pd::agent::spawn(shared.clone(), config.clone(), record.cluster_id, cancel.clone()));
        let metrics_server = match config.metrics_listen {
            Some(a) => Some(
                crate::service::metrics::serve(shared.clone(), a, cancel.clone())
                    .await
                    .map_err(|source| NodeError::Bind { addr: a.to_string(), source })?,
            ),
            None => None,
        };
        Ok(Arc::new(Node {
            shared,
            config,
            cancel,
            kill,
            server: Mutex::new(Some(server)),
            metrics_server: Mutex::new(metrics_server),
            background: Mutex::new(background),
        }))
    }

    /// Reads this node's record, creating it on a new data directory (with the
    /// id from `initial-pd`, or one the PD allocates).
    async fn identity(
        config: &NodeConfig,
        storage: &Arc<Storage>,
        pd: &PdClient,
        cancel: &CancellationToken,
    ) -> Result<NodeRecord, NodeError> {
        let record: Option<NodeRecord> = match storage.node_meta(NODE_RECORD)? {
            Some(b) => Some(decode(&b).map_err(StorageError::from)?),
            None => None,
        };
        let member = config.pd_member_id();
        let mut record = match (record, member) {
            (Some(r), Some(m)) if r.node_id != m => {
                return Err(NodeError::Identity { found: r.node_id, configured: m });
            }
            (Some(r), _) => return Ok(r),
            (None, Some(m)) => NodeRecord { node_id: m, cluster_id: 0, created_at_ms: now_ms(), bootstrapped: false },
            (None, None) => {
                let req = crate::pd::agent::registration(config, None, 0);
                let (id, cluster_id) = crate::pd::agent::register_until_done(pd, &req, cancel)
                    .await
                    .map_err(NodeError::Refused)?
                    .ok_or(NodeError::Cancelled)?;
                tracing::info!(node = id.0, cluster_id, "registered with the placement driver");
                NodeRecord { node_id: id.0, cluster_id, created_at_ms: now_ms(), bootstrapped: false }
            }
        };
        record.bootstrapped = false;
        let r = record.clone();
        storage.call(|done| WriteOp::PutNodeMeta { key: NODE_RECORD, value: encode(&r), done }).await?;
        Ok(record)
    }

    /// On a PD member's new data directory, creates the PD's shard 0 with the
    /// `initial-pd` members as voters. Returns whether its group must be
    /// initialised (once; idempotent across restarts via `bootstrapped`).
    async fn bootstrap_pd(config: &NodeConfig, storage: &Arc<Storage>, record: &NodeRecord) -> Result<bool, NodeError> {
        if record.bootstrapped || config.pd_member_id() != Some(record.node_id) {
            return Ok(false);
        }
        if storage.shard_record(PD_SHARD)?.is_none() {
            let replicas = config
                .initial_pd
                .iter()
                .map(|(id, addr)| ReplicaDescriptor { node: NodeId(*id), addr: addr.clone(), role: ReplicaRole::Voter })
                .collect();
            let record = ShardRecord {
                descriptor: ShardDescriptor {
                    id: PD_SHARD,
                    range: KeyRange::full(),
                    // The group's first membership entry makes it conf_ver 1.
                    epoch: Epoch { conf_ver: 0, version: 1 },
                    replicas,
                },
                data_id: 0,
                applied_index: 0,
                applied_log_id: None,
                membership: None,
                stats: Default::default(),
            };
            storage.call(|done| WriteOp::CreateShard { record, done }).await?;
        }
        Ok(true)
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Stops serving, stops every group and flushes the database.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let server = self.server.lock().expect("server handle lock").take();
        if let Some(s) = server
            && tokio::time::timeout(Duration::from_secs(5), s).await.is_err()
        {
            tracing::warn!("gRPC server did not stop within 5 s; cutting its connections");
        }
        self.kill.cancel();
        if let Some(m) = self.metrics_server.lock().expect("metrics handle lock").take() {
            m.abort();
        }
        // Background loops stop at the cancel; one still busy after the
        // grace period (a bug) is aborted rather than holding up shutdown.
        let background = std::mem::take(&mut *self.background.lock().expect("background handles lock"));
        for mut task in background {
            if tokio::time::timeout(BACKGROUND_STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("a background task did not stop within {BACKGROUND_STOP_GRACE:?}; aborting it");
                task.abort();
            }
        }
        for replica in self.shared.registry.all() {
            replica.group.shutdown().await;
            self.shared.registry.remove(replica.shard());
        }
        if let Err(e) = self.shared.storage.close().await {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!(node = self.shared.id.0, "node stopped");
    }

    /// Stops abruptly, as a killed process would: in-flight writes are lost
    /// unless an earlier durable commit covered them. For tests.
    pub async fn crash(&self) {
        self.kill.cancel();
        if let Some(s) = self.server.lock().expect("server handle lock").take() {
            s.abort();
        }
        if let Some(m) = self.metrics_server.lock().expect("metrics handle lock").take() {
            m.abort();
        }
        self.shared.storage.crash();
        self.cancel.cancel();
        for task in std::mem::take(&mut *self.background.lock().expect("background handles lock")) {
            task.abort();
        }
        for replica in self.shared.registry.all() {
            replica.group.shutdown().await;
            self.shared.registry.remove(replica.shard());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pd_endpoints_add_peers_without_self_or_duplicates() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let got = pd_endpoints_with_peers(&s(&["a:1"]), &s(&["b:1", "me:1", "a:1", "c:1"]), "me:1");
        assert_eq!(got, s(&["a:1", "b:1", "c:1"]));
        // Alone: keep what was configured, even if it is this node.
        assert_eq!(pd_endpoints_with_peers(&s(&["me:1"]), &[], "me:1"), s(&["me:1"]));
        // Bounded.
        let many: Vec<String> = (0..40).map(|i| format!("p:{i}")).collect();
        assert_eq!(pd_endpoints_with_peers(&s(&["a:1"]), &many, "me:1").len(), PD_ENDPOINTS_MAX);
    }
}
