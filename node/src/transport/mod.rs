//! Node-to-node transport: one gRPC connection per peer node carrying the Raft
//! messages of every shard group, batched.
//!
//! Each peer has a task fed by a bounded queue. It takes whatever is queued (up
//! to [`TransportConfig::batch_msgs_max`] messages and
//! [`TransportConfig::batch_bytes_max`] bytes), sends it as one `Raft.Send` RPC
//! and hands each reply back to its caller. At most
//! [`TransportConfig::inflight_batches_max`] batches per peer are in flight, on
//! one HTTP/2 connection. Snapshots stream separately ([`snapshot`]) on the same
//! connection, in bounded chunks.
//!
//! Outgoing snapshots share one bandwidth limit per node ([`bandwidth`]), set
//! from the PD's cluster settings, and their progress is kept per (shard,
//! target) for the leader's reports ([`snapshot::SnapshotProgress`]).
//!
//! This module moves opaque payloads; `crate::raft::network` encodes them.

pub mod bandwidth;
pub mod faults;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::ApiError;
use cairn_proto::net::Net;
use cairn_proto::pb;
use cairn_proto::pb::raft_client::RaftClient;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use self::bandwidth::TokenBucket;
pub use self::snapshot::{SnapshotOffer, SnapshotProgress, TransferProgress};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TransportConfig {
    /// Messages queued per peer before senders wait.
    pub queue_msgs_max: usize,
    pub batch_msgs_max: usize,
    pub batch_bytes_max: usize,
    pub inflight_batches_max: usize,
    pub connect_timeout_ms: u64,
    /// Deadline of one batch RPC.
    pub rpc_timeout_ms: u64,
    /// Largest gRPC message accepted or sent between nodes.
    pub message_bytes_max: usize,
    /// Target size of one snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Nice value (0-19) of the thread reading and encoding an outgoing
    /// snapshot: a move then takes the CPU that client work leaves idle first
    /// (under a saturating write load: the move ~25 % longer, the clients'
    /// loss ~15 points smaller; idle moves unchanged). 0: normal priority.
    pub snapshot_sender_nice: i32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            queue_msgs_max: 4096,
            batch_msgs_max: 512,
            batch_bytes_max: 4 << 20,
            inflight_batches_max: 8,
            connect_timeout_ms: 1000,
            rpc_timeout_ms: 5000,
            message_bytes_max: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_sender_nice: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
    Quiesce,
    Wake,
}

impl MessageKind {
    fn to_pb(self) -> pb::RaftMessageKind {
        match self {
            MessageKind::AppendEntries => pb::RaftMessageKind::AppendEntries,
            MessageKind::Vote => pb::RaftMessageKind::Vote,
            MessageKind::PreVote => pb::RaftMessageKind::PreVote,
            MessageKind::TransferLeader => pb::RaftMessageKind::TransferLeader,
            MessageKind::Quiesce => pb::RaftMessageKind::Quiesce,
            MessageKind::Wake => pb::RaftMessageKind::Wake,
        }
    }

    pub fn from_pb(v: i32) -> Option<Self> {
        Some(match pb::RaftMessageKind::try_from(v).ok()? {
            pb::RaftMessageKind::AppendEntries => MessageKind::AppendEntries,
            pb::RaftMessageKind::Vote => MessageKind::Vote,
            pb::RaftMessageKind::PreVote => MessageKind::PreVote,
            pb::RaftMessageKind::TransferLeader => MessageKind::TransferLeader,
            pb::RaftMessageKind::Quiesce => MessageKind::Quiesce,
            pb::RaftMessageKind::Wake => MessageKind::Wake,
            pb::RaftMessageKind::Unspecified => return None,
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(u64, String),
    #[error("no reply from peer {0} in time")]
    Timeout(u64),
    #[error("peer {0} could not deliver the message: {1}")]
    Remote(u64, ApiError),
    #[error("no address known for peer {0}")]
    UnknownPeer(u64),
    #[error("the transport is shut down")]
    Closed,
}

struct Pending {
    msg: pb::RaftMessage,
    reply: oneshot::Sender<Result<Vec<u8>, TransportError>>,
}

struct Peer {
    addr: String,
    /// Latency-critical messages: votes, heartbeats, leader transfer.
    control: mpsc::Sender<Pending>,
    /// Log replication, whose replies wait for the follower's fsync.
    data: mpsc::Sender<Pending>,
    client: RaftClient<Channel>,
}

/// The node's connections to its peers.
pub struct Transport {
    node_id: u64,
    config: TransportConfig,
    /// The network peers are dialed over.
    net: Net,
    /// Ordered, so per-peer work (pings) goes out in the same order every run.
    peers: Mutex<BTreeMap<u64, Arc<Peer>>>,
    cancel: CancellationToken,
    /// Shared by every outgoing snapshot stream of the node.
    snapshot_bandwidth: Arc<TokenBucket>,
    snapshot_progress: Arc<SnapshotProgress>,
    /// Test fault rules (none in the product).
    faults: faults::Faults,
}

impl Transport {
    /// The snapshot bandwidth starts at the cluster settings' default and
    /// follows the PD's settings once a heartbeat answer carries them.
    pub fn new(node_id: u64, config: TransportConfig, net: Net, cancel: CancellationToken) -> Arc<Self> {
        let rate = cairn_proto::ClusterSettings::default().snapshot_bytes_per_sec;
        crate::metrics::snapshot_rate_limit(rate);
        Arc::new(Self {
            node_id,
            config,
            net,
            peers: Mutex::new(BTreeMap::new()),
            cancel,
            snapshot_bandwidth: Arc::new(TokenBucket::new(rate)),
            snapshot_progress: Arc::new(SnapshotProgress::default()),
            faults: faults::Faults::default(),
        })
    }

    /// The fault rules of this node's outgoing traffic, for tests.
    pub fn faults(&self) -> &faults::Faults {
        &self.faults
    }

    /// Sets the outgoing snapshot bandwidth of this node (all transfers
    /// together; 0 = unlimited). Transfers in flight follow at once.
    pub fn set_snapshot_bytes_per_sec(&self, rate: u64) {
        if self.snapshot_bandwidth.set_rate(rate) {
            crate::metrics::snapshot_rate_limit(rate);
            tracing::info!(bytes_per_sec = rate, "snapshot bandwidth limit changed");
        }
    }

    pub fn snapshot_bytes_per_sec(&self) -> u64 {
        self.snapshot_bandwidth.rate_bytes_per_sec()
    }

    /// How far the snapshot this node is sending to `target` for `shard` is,
    /// if one is in flight.
    pub fn snapshot_progress(&self, shard: u64, target: u64) -> Option<TransferProgress> {
        self.snapshot_progress.get(shard, target)
    }

    /// Outgoing snapshot transfers in flight.
    pub fn snapshots_in_flight(&self) -> usize {
        self.snapshot_progress.len()
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Records (or updates) the address of a peer.
    pub fn set_peer_addr(&self, target: u64, addr: &str) {
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        if peers.get(&target).map(|p| p.addr == addr).unwrap_or(false) {
            return;
        }
        match self.connect(target, addr) {
            Ok(peer) => {
                // Replacing the entry drops the old queue sender; its task drains and ends.
                peers.insert(target, peer);
            }
            Err(e) => tracing::warn!(peer = target, addr, error = %e, "invalid peer address"),
        }
    }

    fn peer(&self, target: u64) -> Result<Arc<Peer>, TransportError> {
        self.peers.lock().expect("peers lock poisoned").get(&target).cloned().ok_or(TransportError::UnknownPeer(target))
    }

    fn connect(&self, target: u64, addr: &str) -> Result<Arc<Peer>, String> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = self.net.channel(&endpoint);
        let client = RaftClient::new(channel)
            .max_decoding_message_size(self.config.message_bytes_max)
            .max_encoding_message_size(self.config.message_bytes_max);
        // Two lanes on one connection: a batch's reply waits for its slowest
        // message, and appends wait for the follower's fsync, so heartbeats and
        // votes must never queue behind them (or leaders would look dead).
        let lane = || {
            let (tx, rx) = mpsc::channel(self.config.queue_msgs_max);
            let task = PeerTask {
                from: self.node_id,
                to: target,
                client: client.clone(),
                rx,
                config: self.config.clone(),
                inflight: Arc::new(Semaphore::new(self.config.inflight_batches_max)),
            };
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = task.run() => {}
                }
            });
            tx
        };
        let control = lane();
        let data = lane();
        Ok(Arc::new(Peer { addr: addr.to_string(), control, data, client: client.clone() }))
    }

    /// Sends one message of one shard group and waits for its reply payload.
    /// `urgent` messages (votes, heartbeats) travel in their own lane.
    pub async fn call(
        &self,
        target: u64,
        shard: u64,
        kind: MessageKind,
        payload: Vec<u8>,
        urgent: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        match self.faults.message(target, shard) {
            faults::Fate::Deliver => {}
            faults::Fate::DeliverAfter(delay) => tokio::time::sleep(delay.min(timeout)).await,
            faults::Fate::Drop => {
                // As a lost message looks to the sender: no answer in time.
                tokio::time::sleep(timeout).await;
                return Err(TransportError::Timeout(target));
            }
        }
        let peer = self.peer(target)?;
        let lane = if urgent { &peer.control } else { &peer.data };
        let (reply, rx) = oneshot::channel();
        let msg = pb::RaftMessage { shard_id: shard, kind: kind.to_pb() as i32, payload };
        let fut = async {
            lane.send(Pending { msg, reply }).await.map_err(|_| TransportError::Closed)?;
            rx.await.map_err(|_| TransportError::Closed)?
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(target)),
        }
    }

    /// Ids of every peer this node has an address for.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.lock().expect("peers lock poisoned").keys().copied().collect()
    }

    /// Checks that `target` answers on the shared connection (an empty batch).
    pub async fn ping(&self, target: u64, timeout: Duration) -> Result<(), TransportError> {
        if self.faults.message(target, u64::MAX) == faults::Fate::Drop {
            tokio::time::sleep(timeout).await;
            return Err(TransportError::Timeout(target));
        }
        let mut client = self.client_for(target)?;
        let mut req = tonic::Request::new(pb::RaftBatch { from_node: self.node_id, to_node: target, messages: vec![] });
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.send(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(TransportError::Unreachable(target, status.message().to_string())),
            Err(_) => Err(TransportError::Timeout(target)),
        }
    }

    pub(crate) fn client_for(&self, target: u64) -> Result<RaftClient<Channel>, TransportError> {
        Ok(self.peer(target)?.client.clone())
    }
}

struct PeerTask {
    from: u64,
    to: u64,
    client: RaftClient<Channel>,
    rx: mpsc::Receiver<Pending>,
    config: TransportConfig,
    inflight: Arc<Semaphore>,
}

impl PeerTask {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut bytes = first.msg.payload.len();
            let mut batch = vec![first];
            while batch.len() < self.config.batch_msgs_max && bytes < self.config.batch_bytes_max {
                match self.rx.try_recv() {
                    Ok(p) => {
                        bytes += p.msg.payload.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let Ok(permit) = self.inflight.clone().acquire_owned().await else { return };
            let mut client = self.client.clone();
            let (from, to) = (self.from, self.to);
            let timeout = Duration::from_millis(self.config.rpc_timeout_ms);
            tokio::spawn(async move {
                let _permit = permit;
                let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.msg, p.reply)).unzip();
                let mut req = tonic::Request::new(pb::RaftBatch { from_node: from, to_node: to, messages });
                req.set_timeout(timeout);
                match client.send(req).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        if resp.replies.len() != replies.len() {
                            let err = TransportError::Unreachable(
                                to,
                                format!("{} replies for {} messages", resp.replies.len(), replies.len()),
                            );
                            for r in replies {
                                let _ = r.send(Err(err.clone()));
                            }
                            return;
                        }
                        for (reply, r) in resp.replies.into_iter().zip(replies) {
                            let result = match reply.result {
                                Some(pb::raft_reply::Result::Payload(p)) => Ok(p),
                                Some(pb::raft_reply::Result::Error(e)) => {
                                    Err(TransportError::Remote(to, ApiError::from_pb(e)))
                                }
                                None => Err(TransportError::Unreachable(to, "empty reply".into())),
                            };
                            let _ = r.send(result);
                        }
                    }
                    Err(status) => {
                        let err = TransportError::Unreachable(to, status.message().to_string());
                        tracing::debug!(peer = to, error = %status, "raft batch failed");
                        for r in replies {
                            let _ = r.send(Err(err.clone()));
                        }
                    }
                }
            });
        }
    }
}
