//! A running node: opens its database, bootstraps or reloads its shards, starts
//! one Raft group per hosted shard, and serves gRPC until shut down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::{
    Epoch, KeyRange, NodeId, NodeStats, ReplicaDescriptor, ReplicaRole, ShardDescriptor, ShardId, ShardStatus,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::raft::{GroupError, RaftGroup};
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
    #[error("data directory belongs to node {found}, not node {configured}")]
    Identity { found: u64, configured: u64 },
    #[error("shard {shard}: {source}")]
    Group { shard: ShardId, source: GroupError },
}

/// What the services of a node share.
pub struct NodeShared {
    pub id: NodeId,
    pub addr: String,
    pub storage: Arc<Storage>,
    pub registry: Arc<Registry>,
    pub transport: Arc<Transport>,
    pub kv: Kv,
}

impl NodeShared {
    /// Creates a replica of a shard on this node at run time and starts its Raft
    /// group. `members`, when given, initialises a new group with those voters;
    /// a replica joining an existing group starts empty and is filled by its
    /// leader (log or snapshot).
    pub async fn create_replica(
        &self,
        descriptor: ShardDescriptor,
        members: Option<&[(NodeId, String)]>,
        config: &NodeConfig,
    ) -> Result<(), NodeError> {
        let shard = descriptor.id;
        let record = ShardRecord {
            descriptor,
            data_id: 0,
            applied_index: 0,
            applied_log_id: None,
            membership: None,
            stats: Default::default(),
        };
        self.storage.call(|done| WriteOp::CreateShard { record, done }).await?;
        let record = self.storage.shard_record(shard)?.ok_or(StorageError::ShardMissing(shard.0))?;
        let (tx, rx) = watch::channel(record.descriptor.clone());
        let group = RaftGroup::start(self.id, shard, self.storage.clone(), self.transport.clone(), &config.raft, tx)
            .await
            .map_err(|source| NodeError::Group { shard, source })?;
        if let Some(members) = members {
            group.initialize(members).await.map_err(|source| NodeError::Group { shard, source })?;
        }
        self.registry.insert(Arc::new(Replica { group, descriptor: rx }));
        tracing::info!(%shard, "replica created");
        Ok(())
    }

    /// Stops a replica and deletes it from this node: its record, log and
    /// metadata at once, its documents in the background.
    pub async fn destroy_replica(&self, shard: ShardId) -> Result<(), NodeError> {
        if let Some(replica) = self.registry.remove(shard) {
            replica.group.shutdown().await;
        }
        self.storage.call(|done| WriteOp::DestroyShard { shard: shard.0, done }).await?;
        tracing::info!(%shard, "replica destroyed");
        Ok(())
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

    pub fn shard_statuses(&self) -> Vec<ShardStatus> {
        self.registry
            .all()
            .iter()
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

pub struct Node {
    pub shared: Arc<NodeShared>,
    pub config: NodeConfig,
    cancel: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
    metrics_server: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
        config.validate().map_err(NodeError::Config)?;
        let id = NodeId(config.node_id);
        let addr = config.advertise_addr();
        let storage_config = StorageConfig { cache_bytes: config.cache_bytes, ..Default::default() };
        let storage = Storage::open(&config.data_dir.join(DB_FILE), storage_config)?;
        let cancel = CancellationToken::new();
        let transport = Transport::new(id.0, config.transport.clone(), cancel.child_token());
        let registry = Arc::new(Registry::default());

        let fresh = Self::bootstrap(&config, &storage).await?;
        for record in storage.shard_records()? {
            let shard = record.shard();
            let (tx, rx) = watch::channel(record.descriptor.clone());
            let group = RaftGroup::start(id, shard, storage.clone(), transport.clone(), &config.raft, tx)
                .await
                .map_err(|source| NodeError::Group { shard, source })?;
            registry.insert(Arc::new(Replica { group, descriptor: rx }));
        }
        if fresh {
            let members: Vec<(NodeId, String)> =
                config.initial_members.iter().map(|(id, a)| (NodeId(*id), a.clone())).collect();
            for replica in registry.all() {
                replica
                    .group
                    .initialize(&members)
                    .await
                    .map_err(|source| NodeError::Group { shard: replica.shard(), source })?;
            }
        }
        tracing::info!(node = id.0, %addr, shards = registry.len(), fresh, "node started");

        let kv = Kv {
            registry: registry.clone(),
            storage: storage.clone(),
            limits: config.limits.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        };
        let shared = Arc::new(NodeShared { id, addr, storage, registry, transport, kv });
        let server = crate::service::serve(shared.clone(), listener, &config, cancel.clone());
        let background = crate::shard::quiesce::spawn(shared.clone(), &config.raft, cancel.clone());
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
            server: Mutex::new(Some(server)),
            metrics_server: Mutex::new(metrics_server),
            background: Mutex::new(background),
        }))
    }

    /// Writes the node record and, on a new data directory with initial
    /// members, the initial shards. Returns whether the shards were just created.
    async fn bootstrap(config: &NodeConfig, storage: &Arc<Storage>) -> Result<bool, NodeError> {
        let record: Option<NodeRecord> = match storage.node_meta(NODE_RECORD)? {
            Some(b) => Some(decode(&b).map_err(StorageError::from)?),
            None => None,
        };
        if let Some(r) = &record {
            if r.node_id != config.node_id {
                return Err(NodeError::Identity { found: r.node_id, configured: config.node_id });
            }
            if r.bootstrapped {
                if !config.initial_members.is_empty() {
                    tracing::info!("data directory already bootstrapped; ignoring the initial members and shards");
                }
                return Ok(false);
            }
        }
        if config.initial_members.is_empty() {
            if record.is_none() {
                let r = NodeRecord { node_id: config.node_id, created_at_ms: now_ms(), bootstrapped: false };
                storage.call(|done| WriteOp::PutNodeMeta { key: NODE_RECORD, value: encode(&r), done }).await?;
            }
            return Ok(false);
        }
        let replicas: Vec<ReplicaDescriptor> = config
            .initial_members
            .iter()
            .map(|(id, addr)| ReplicaDescriptor { node: NodeId(*id), addr: addr.clone(), role: ReplicaRole::Voter })
            .collect();
        // A crash part-way leaves some shards; create only the missing ones.
        let existing: Vec<ShardId> = storage.shard_records()?.iter().map(|r| r.shard()).collect();
        for (i, range) in KeyRange::split_evenly(config.initial_shards).into_iter().enumerate() {
            let shard = ShardId(i as u64 + 1);
            if existing.contains(&shard) {
                continue;
            }
            let record = ShardRecord {
                descriptor: ShardDescriptor {
                    id: shard,
                    range,
                    epoch: Epoch { conf_ver: 0, version: 1 },
                    replicas: replicas.clone(),
                },
                data_id: 0,
                applied_index: 0,
                applied_log_id: None,
                membership: None,
                stats: Default::default(),
            };
            storage.call(|done| WriteOp::CreateShard { record, done }).await?;
        }
        let r = NodeRecord {
            node_id: config.node_id,
            created_at_ms: record.map(|r| r.created_at_ms).unwrap_or_else(now_ms),
            bootstrapped: true,
        };
        storage.call(|done| WriteOp::PutNodeMeta { key: NODE_RECORD, value: encode(&r), done }).await?;
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
            tracing::warn!("gRPC server did not stop within 5 s");
        }
        if let Some(m) = self.metrics_server.lock().expect("metrics handle lock").take() {
            m.abort();
        }
        let background = std::mem::take(&mut *self.background.lock().expect("background handles lock"));
        for task in background {
            let _ = task.await;
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
