//! Domain types of the placement driver's API (service `Pd`) and their
//! conversions. Conversions from the wire validate and return
//! [`ApiError::InvalidArgument`] instead of panicking.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::pb;
use crate::types::*;

/// Where a shard lives: its descriptor (intent, written only by the PD) and the
/// leader its replicas last reported (observed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardRoute {
    pub descriptor: ShardDescriptor,
    pub leader: Option<(NodeId, String)>,
}

/// Lifecycle state of a node as the PD sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
    Draining,
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "up" => NodeState::Up,
            "down" => NodeState::Down,
            "draining" => NodeState::Draining,
            "removed" => NodeState::Removed,
            _ => return None,
        })
    }
}

/// What a node reports about one replica it hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub role: RaftRole,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    pub key_count: u64,
    pub size_bytes: u64,
    /// Leaders only: the group's replicas as of `epoch.conf_ver`. In a joint
    /// configuration the voters are the union of the old and new voter sets.
    pub replicas: Vec<ReplicaDescriptor>,
    /// Leaders only: the configuration is joint (a voter change in between its
    /// two entries).
    pub joint: bool,
    /// Leaders only: the last index of the leader's log.
    pub last_log_index: u64,
    /// Leaders only: replication to every other replica.
    pub progress: Vec<PeerProgress>,
}

/// What a shard leader knows about replication to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PeerProgress {
    pub node: NodeId,
    /// The peer's log matches the leader's up to here (0: nothing yet).
    pub matched_index: u64,
    /// A snapshot is being sent to the peer: bytes sent so far and the shard's
    /// size (both 0 when no snapshot is in flight).
    pub snapshot_sent_bytes: u64,
    pub snapshot_total_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub cluster_id: u64,
    pub addr: String,
    pub stats: NodeStats,
    /// With `full`: every hosted replica; without: the changed ones.
    pub replicas: Vec<ReplicaReport>,
    pub full: bool,
    /// Replicas no longer hosted since the last heartbeat (when not `full`).
    pub removed: Vec<ShardId>,
}

/// The PD's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HeartbeatAnswer {
    pub commands: Vec<NodeCommand>,
    /// Milliseconds until the next heartbeat only (0: the configured interval).
    /// The PD asks nodes taking part in an operator to report more often.
    pub interval_ms: u64,
    /// Send every replica in the next heartbeat.
    pub full_report_wanted: bool,
    /// The cluster settings, for the parts nodes apply themselves (snapshot
    /// bandwidth). `None` from a PD that has none yet.
    pub settings: Option<ClusterSettings>,
}

/// An instruction from the PD to a node. Every command is idempotent, and the
/// PD re-sends it until the node's reports show its effect. Commands to a
/// shard leader name the `conf_ver` they were computed from; a leader whose
/// configuration has moved on ignores them (the PD recomputes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCommand {
    /// Create a replica of a new shard, initialising its group with the
    /// descriptor's voters.
    CreateReplica { descriptor: ShardDescriptor },
    /// Create an empty replica of an existing shard whose configuration already
    /// lists this node (as a learner); its leader fills it. Refused when a
    /// tombstone of the shard is at least `descriptor.epoch.conf_ver`.
    JoinReplica { descriptor: ShardDescriptor },
    /// Leader: add `node` as a learner.
    AddLearner { shard: ShardId, conf_ver: u64, node: NodeId, addr: String },
    /// Leader: remove the learner `node` (an operator rolled back).
    RemoveLearner { shard: ShardId, conf_ver: u64, node: NodeId },
    /// Leader: make `voters` the voter set (joint consensus, then the new
    /// configuration); voters left out leave the group.
    ChangeVoters { shard: ShardId, conf_ver: u64, voters: Vec<NodeId> },
    /// Leader: hand leadership to `to`.
    TransferLeader { shard: ShardId, to: NodeId },
    /// Delete this node's replica of `shard` (documents, log, record) and leave
    /// a tombstone at `conf_ver`, unless the replica's own configuration is
    /// newer than `conf_ver`.
    DestroyReplica { shard: ShardId, conf_ver: u64 },
}

impl NodeCommand {
    pub fn shard(&self) -> ShardId {
        match self {
            NodeCommand::CreateReplica { descriptor } | NodeCommand::JoinReplica { descriptor } => descriptor.id,
            NodeCommand::AddLearner { shard, .. }
            | NodeCommand::RemoveLearner { shard, .. }
            | NodeCommand::ChangeVoters { shard, .. }
            | NodeCommand::TransferLeader { shard, .. }
            | NodeCommand::DestroyReplica { shard, .. } => *shard,
        }
    }
}

/// What an operator does to one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum OperatorKind {
    /// Add `to` as a learner, fill it, then swap it in for the voter `from`.
    MoveReplica { from: NodeId, to: NodeId },
    /// Add `to` as a new voter (replication factor raised).
    AddReplica { to: NodeId },
    /// Remove the voter `from` (replication factor lowered).
    RemoveReplica { from: NodeId },
    /// Hand the shard's leadership to `to`.
    TransferLeader { to: NodeId },
}

impl std::fmt::Display for OperatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorKind::MoveReplica { from, to } => write!(f, "move-replica {from}->{to}"),
            OperatorKind::AddReplica { to } => write!(f, "add-replica {to}"),
            OperatorKind::RemoveReplica { from } => write!(f, "remove-replica {from}"),
            OperatorKind::TransferLeader { to } => write!(f, "transfer-leader ->{to}"),
        }
    }
}

/// An operator in flight, as `ListOperators` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorInfo {
    pub id: u64,
    pub shard: ShardId,
    pub kind: OperatorKind,
    /// Why it exists: "admin", "repair", "drain", "balance-replicas",
    /// "balance-leaders", "replication-factor".
    pub reason: String,
    /// The step it waits for now, e.g. "add-learner", "catch-up", "promote".
    pub step: String,
    pub age_ms: u64,
    /// Snapshot progress to the new replica (0 of 0 when none in flight).
    pub snapshot_sent_bytes: u64,
    pub snapshot_total_bytes: u64,
    /// Set once the operator is being rolled back, with the reason.
    pub rollback: Option<String>,
}

/// An administrative state an operator can set on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRequest {
    /// Back to normal (ends a drain).
    Active,
    /// Move every replica and leader off the node.
    Draining,
    /// Forget the node; refused while it still holds replicas.
    Removed,
}

impl AdminRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRequest::Active => "active",
            AdminRequest::Draining => "draining",
            AdminRequest::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => AdminRequest::Active,
            "draining" => AdminRequest::Draining,
            "removed" => AdminRequest::Removed,
            _ => return None,
        })
    }
}

/// One node's share of the cluster, for `RebalanceStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBalance {
    pub node: NodeId,
    pub state: NodeState,
    pub replicas: u64,
    pub leaders: u64,
    pub size_bytes: u64,
}

/// How far the cluster is from balanced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// Every node that may hold replicas (up, active), and draining or down
    /// nodes that still do.
    pub nodes: Vec<NodeBalance>,
    /// Mean replicas per up, active node.
    pub mean_replicas: f64,
    /// Max minus min replicas over up, active nodes (balanced: at most 1).
    pub replica_spread: u64,
    /// Max minus min leaders over up, active nodes.
    pub leader_spread: u64,
    /// Shards with fewer live voters than the replication factor.
    pub under_replicated: u64,
    /// Replicas still on draining, down-too-long or removed nodes.
    pub misplaced: u64,
    pub operators: u64,
    /// No rule of the scheduler has anything left to do.
    pub balanced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterNode {
    /// `None` for a node that has never registered.
    pub node: Option<NodeId>,
    pub addr: String,
    pub capacity_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// 0 on first registration.
    pub cluster_id: u64,
}

/// A change of the shard map, as `WatchShards` streams it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShardMapEvent {
    pub revision: u64,
    /// `shards` is the whole map and replaces what the watcher had.
    pub full: bool,
    pub shards: Vec<ShardRoute>,
    pub removed: Vec<ShardId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: String,
    pub state: NodeState,
    pub capacity_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// `None`: not heard from since the current PD leader took over.
    pub last_heartbeat_ms_ago: Option<u64>,
    pub replicas: u64,
    pub leaders: u64,
    pub size_bytes: u64,
    pub db_bytes: u64,
    pub pd_member: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub route: ShardRoute,
    pub key_count: u64,
    pub size_bytes: u64,
    pub term: u64,
    pub applied_index: u64,
}

/// Cluster-wide settings, owned by the PD (`cairnctl config set|show`).
/// Stored as JSON in the cluster record; fields added later take their
/// defaults when an older record is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    pub replication_factor: u32,
    pub max_node_down_time_ms: u64,
    pub split_size_bytes: u64,
    pub split_keys: u64,
    /// Operators a node takes part in at once (as source or target).
    pub max_moves_per_node: u32,
    /// Operators in flight in the whole cluster.
    pub max_operators: u32,
    /// Outgoing snapshot bandwidth of each node, all transfers together.
    pub snapshot_bytes_per_sec: u64,
    /// An operator not past its promote step by then is rolled back.
    pub operator_timeout_ms: u64,
    /// Replica bytes may differ from the mean by this share before the
    /// scheduler moves replicas for size (counts are kept within one).
    pub balance_bytes_tolerance_percent: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            max_node_down_time_ms: 30 * 60 * 1000,
            split_size_bytes: 96 << 20,
            split_keys: 1_000_000,
            max_moves_per_node: 2,
            max_operators: 16,
            snapshot_bytes_per_sec: 256 << 20,
            operator_timeout_ms: 10 * 60 * 1000,
            balance_bytes_tolerance_percent: 25,
        }
    }
}

/// The names `cairnctl config set NAME VALUE` accepts, with what they set.
pub const SETTING_NAMES: &[(&str, &str)] = &[
    ("replication-factor", "voters per shard (1-7)"),
    ("max-node-down-time", "how long a node may be down before its replicas are re-created elsewhere (e.g. 30s, 30m)"),
    ("max-moves-per-node", "operators a node takes part in at once"),
    ("max-operators", "operators the scheduler keeps in flight (0 pauses it: no repair, balance or drain moves)"),
    ("snapshot-bytes-per-sec", "outgoing snapshot bandwidth per node (e.g. 64MiB)"),
    ("operator-timeout", "an operator not promoted by then is rolled back (e.g. 10m)"),
    ("balance-bytes-tolerance-percent", "how far a node's bytes may stray from the mean"),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PdEvent {
    pub seq: u64,
    pub at_ms: u64,
    pub message: String,
}

/// The whole cluster as the PD leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: u64,
    pub pd_leader: Option<(NodeId, String)>,
    pub pd_members: Vec<NodeInfo>,
    pub nodes: Vec<NodeInfo>,
    pub shards: Vec<ShardInfo>,
    pub settings: ClusterSettings,
    pub revision: u64,
    pub events: Vec<PdEvent>,
}

impl ClusterStatus {
    /// Shards with fewer voters than the replication factor.
    pub fn under_replicated(&self) -> usize {
        let down: Vec<NodeId> = self.nodes.iter().filter(|n| n.state != NodeState::Up).map(|n| n.id).collect();
        self.shards
            .iter()
            .filter(|s| {
                let live_voters = s
                    .route
                    .descriptor
                    .replicas
                    .iter()
                    .filter(|r| r.role == ReplicaRole::Voter && !down.contains(&r.node))
                    .count();
                live_voters < self.settings.replication_factor as usize
            })
            .count()
    }
}

// ------------------------------------------------------------------ conversions

fn replicas_to_pb(replicas: &[ReplicaDescriptor]) -> Vec<pb::Replica> {
    let d = ShardDescriptor { replicas: replicas.to_vec(), ..Default::default() };
    pb::ShardDescriptor::from(&d).replicas
}

fn replicas_from_pb(replicas: Vec<pb::Replica>) -> Result<Vec<ReplicaDescriptor>, ApiError> {
    let d = pb::ShardDescriptor { replicas, ..Default::default() };
    Ok(ShardDescriptor::try_from(d)?.replicas)
}

fn leader_of(id: u64, addr: String) -> Option<(NodeId, String)> {
    (id != 0).then_some((NodeId(id), addr))
}

/// A node id that must be set (0 is "no node" on the wire).
fn node_id(id: u64, what: &str) -> Result<NodeId, ApiError> {
    if id == 0 {
        return Err(ApiError::InvalidArgument(format!("{what} without a node id")));
    }
    Ok(NodeId(id))
}

/// The most voters a `ChangeVoters` command may name. The replication factor
/// is at most 7; this bound only keeps a malformed message from being
/// accepted.
const CHANGE_VOTERS_MAX: usize = 16;

/// Longest node address a command may carry (as `RegisterNode` accepts).
const NODE_ADDR_BYTES_MAX: usize = 256;

fn descriptor_from_pb(d: Option<pb::ShardDescriptor>, what: &str) -> Result<ShardDescriptor, ApiError> {
    d.ok_or_else(|| ApiError::InvalidArgument(format!("{what} without descriptor")))?.try_into()
}

impl From<&ShardRoute> for pb::ShardRoute {
    fn from(r: &ShardRoute) -> Self {
        let (leader_id, leader_addr) = r.leader.clone().map(|(n, a)| (n.0, a)).unwrap_or_default();
        pb::ShardRoute { descriptor: Some((&r.descriptor).into()), leader_id, leader_addr }
    }
}

impl TryFrom<pb::ShardRoute> for ShardRoute {
    type Error = ApiError;

    fn try_from(r: pb::ShardRoute) -> Result<Self, ApiError> {
        let descriptor =
            r.descriptor.ok_or_else(|| ApiError::InvalidArgument("shard route without descriptor".into()))?;
        Ok(ShardRoute { descriptor: descriptor.try_into()?, leader: leader_of(r.leader_id, r.leader_addr) })
    }
}

impl From<&ReplicaReport> for pb::ReplicaReport {
    fn from(r: &ReplicaReport) -> Self {
        pb::ReplicaReport {
            shard_id: r.shard.0,
            epoch: Some(r.epoch.into()),
            role: r.role.as_str().to_string(),
            leader_id: r.leader.map(|n| n.0).unwrap_or(0),
            term: r.term,
            applied_index: r.applied_index,
            key_count: r.key_count,
            size_bytes: r.size_bytes,
            replicas: replicas_to_pb(&r.replicas),
            joint: r.joint,
            last_log_index: r.last_log_index,
            progress: r.progress.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::ReplicaReport> for ReplicaReport {
    type Error = ApiError;

    fn try_from(r: pb::ReplicaReport) -> Result<Self, ApiError> {
        let role = RaftRole::parse(&r.role)
            .ok_or_else(|| ApiError::InvalidArgument(format!("unknown raft role {:?}", r.role)))?;
        Ok(ReplicaReport {
            shard: ShardId(r.shard_id),
            epoch: r.epoch.map(Epoch::from).unwrap_or_default(),
            role,
            leader: (r.leader_id != 0).then_some(NodeId(r.leader_id)),
            term: r.term,
            applied_index: r.applied_index,
            key_count: r.key_count,
            size_bytes: r.size_bytes,
            replicas: replicas_from_pb(r.replicas)?,
            joint: r.joint,
            last_log_index: r.last_log_index,
            progress: r.progress.into_iter().map(PeerProgress::try_from).collect::<Result<_, _>>()?,
        })
    }
}

impl From<&PeerProgress> for pb::PeerProgress {
    fn from(p: &PeerProgress) -> Self {
        pb::PeerProgress {
            node_id: p.node.0,
            matched_index: p.matched_index,
            snapshot_sent_bytes: p.snapshot_sent_bytes,
            snapshot_total_bytes: p.snapshot_total_bytes,
        }
    }
}

impl TryFrom<pb::PeerProgress> for PeerProgress {
    type Error = ApiError;

    fn try_from(p: pb::PeerProgress) -> Result<Self, ApiError> {
        Ok(PeerProgress {
            node: node_id(p.node_id, "peer progress")?,
            matched_index: p.matched_index,
            snapshot_sent_bytes: p.snapshot_sent_bytes,
            snapshot_total_bytes: p.snapshot_total_bytes,
        })
    }
}

impl From<&Heartbeat> for pb::HeartbeatRequest {
    fn from(h: &Heartbeat) -> Self {
        pb::HeartbeatRequest {
            node_id: h.node.0,
            cluster_id: h.cluster_id,
            addr: h.addr.clone(),
            stats: Some((&h.stats).into()),
            replicas: h.replicas.iter().map(Into::into).collect(),
            full: h.full,
            removed: h.removed.iter().map(|s| s.0).collect(),
        }
    }
}

impl TryFrom<pb::HeartbeatRequest> for Heartbeat {
    type Error = ApiError;

    fn try_from(h: pb::HeartbeatRequest) -> Result<Self, ApiError> {
        if h.node_id == 0 {
            return Err(ApiError::InvalidArgument("heartbeat without a node id".into()));
        }
        Ok(Heartbeat {
            node: NodeId(h.node_id),
            cluster_id: h.cluster_id,
            addr: h.addr,
            stats: h.stats.map(NodeStats::from).unwrap_or_default(),
            replicas: h.replicas.into_iter().map(ReplicaReport::try_from).collect::<Result<_, _>>()?,
            full: h.full,
            removed: h.removed.into_iter().map(ShardId).collect(),
        })
    }
}

impl From<&NodeCommand> for pb::NodeCommand {
    fn from(c: &NodeCommand) -> Self {
        use pb::node_command::Command;
        let command = match c {
            NodeCommand::CreateReplica { descriptor } => {
                Command::CreateReplica(pb::CreateReplica { descriptor: Some(descriptor.into()) })
            }
            NodeCommand::JoinReplica { descriptor } => {
                Command::JoinReplica(pb::JoinReplica { descriptor: Some(descriptor.into()) })
            }
            NodeCommand::AddLearner { shard, conf_ver, node, addr } => Command::AddLearner(pb::AddLearner {
                shard_id: shard.0,
                conf_ver: *conf_ver,
                node_id: node.0,
                addr: addr.clone(),
            }),
            NodeCommand::RemoveLearner { shard, conf_ver, node } => {
                Command::RemoveLearner(pb::RemoveLearner { shard_id: shard.0, conf_ver: *conf_ver, node_id: node.0 })
            }
            NodeCommand::ChangeVoters { shard, conf_ver, voters } => Command::ChangeVoters(pb::ChangeVoters {
                shard_id: shard.0,
                conf_ver: *conf_ver,
                voters: voters.iter().map(|n| n.0).collect(),
            }),
            NodeCommand::TransferLeader { shard, to } => {
                Command::TransferLeader(pb::TransferLeader { shard_id: shard.0, to_node_id: to.0 })
            }
            NodeCommand::DestroyReplica { shard, conf_ver } => {
                Command::DestroyReplica(pb::DestroyReplica { shard_id: shard.0, conf_ver: *conf_ver })
            }
        };
        pb::NodeCommand { command: Some(command) }
    }
}

impl TryFrom<pb::NodeCommand> for NodeCommand {
    type Error = ApiError;

    fn try_from(c: pb::NodeCommand) -> Result<Self, ApiError> {
        use pb::node_command::Command;
        match c.command {
            Some(Command::CreateReplica(c)) => {
                Ok(NodeCommand::CreateReplica { descriptor: descriptor_from_pb(c.descriptor, "create-replica")? })
            }
            Some(Command::JoinReplica(c)) => {
                Ok(NodeCommand::JoinReplica { descriptor: descriptor_from_pb(c.descriptor, "join-replica")? })
            }
            Some(Command::AddLearner(c)) => {
                if c.addr.is_empty() || c.addr.len() > NODE_ADDR_BYTES_MAX {
                    return Err(ApiError::InvalidArgument(format!(
                        "add-learner: a node address must be 1 to {NODE_ADDR_BYTES_MAX} bytes"
                    )));
                }
                Ok(NodeCommand::AddLearner {
                    shard: ShardId(c.shard_id),
                    conf_ver: c.conf_ver,
                    node: node_id(c.node_id, "add-learner")?,
                    addr: c.addr,
                })
            }
            Some(Command::RemoveLearner(c)) => Ok(NodeCommand::RemoveLearner {
                shard: ShardId(c.shard_id),
                conf_ver: c.conf_ver,
                node: node_id(c.node_id, "remove-learner")?,
            }),
            Some(Command::ChangeVoters(c)) => {
                if c.voters.is_empty() || c.voters.len() > CHANGE_VOTERS_MAX {
                    return Err(ApiError::InvalidArgument(format!(
                        "change-voters: the voter list must name 1 to {CHANGE_VOTERS_MAX} nodes"
                    )));
                }
                let mut voters = Vec::with_capacity(c.voters.len());
                for v in c.voters {
                    let v = node_id(v, "change-voters: a voter")?;
                    if voters.contains(&v) {
                        return Err(ApiError::InvalidArgument(format!("change-voters: node {v} named twice")));
                    }
                    voters.push(v);
                }
                Ok(NodeCommand::ChangeVoters { shard: ShardId(c.shard_id), conf_ver: c.conf_ver, voters })
            }
            Some(Command::TransferLeader(c)) => Ok(NodeCommand::TransferLeader {
                shard: ShardId(c.shard_id),
                to: node_id(c.to_node_id, "transfer-leader")?,
            }),
            Some(Command::DestroyReplica(c)) => {
                Ok(NodeCommand::DestroyReplica { shard: ShardId(c.shard_id), conf_ver: c.conf_ver })
            }
            None => Err(ApiError::InvalidArgument("empty node command".into())),
        }
    }
}

impl From<&HeartbeatAnswer> for pb::HeartbeatResponse {
    fn from(a: &HeartbeatAnswer) -> Self {
        pb::HeartbeatResponse {
            commands: a.commands.iter().map(Into::into).collect(),
            heartbeat_interval_ms: a.interval_ms,
            full_report_wanted: a.full_report_wanted,
            settings: a.settings.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::HeartbeatResponse> for HeartbeatAnswer {
    type Error = ApiError;

    fn try_from(a: pb::HeartbeatResponse) -> Result<Self, ApiError> {
        Ok(HeartbeatAnswer {
            commands: a.commands.into_iter().map(NodeCommand::try_from).collect::<Result<_, _>>()?,
            interval_ms: a.heartbeat_interval_ms,
            full_report_wanted: a.full_report_wanted,
            settings: a.settings.map(ClusterSettings::from),
        })
    }
}

impl From<&RegisterNode> for pb::RegisterNodeRequest {
    fn from(r: &RegisterNode) -> Self {
        pb::RegisterNodeRequest {
            node_id: r.node.map(|n| n.0).unwrap_or(0),
            addr: r.addr.clone(),
            capacity_bytes: r.capacity_bytes,
            labels: r.labels.clone().into_iter().collect(),
            cluster_id: r.cluster_id,
        }
    }
}

impl TryFrom<pb::RegisterNodeRequest> for RegisterNode {
    type Error = ApiError;

    fn try_from(r: pb::RegisterNodeRequest) -> Result<Self, ApiError> {
        if r.addr.is_empty() || r.addr.len() > 256 {
            return Err(ApiError::InvalidArgument("a node address must be 1 to 256 bytes".into()));
        }
        if r.labels.len() > 64 || r.labels.iter().any(|(k, v)| k.len() > 128 || v.len() > 256) {
            return Err(ApiError::InvalidArgument("too many or too long labels".into()));
        }
        Ok(RegisterNode {
            node: (r.node_id != 0).then_some(NodeId(r.node_id)),
            addr: r.addr,
            capacity_bytes: r.capacity_bytes,
            labels: r.labels.into_iter().collect(),
            cluster_id: r.cluster_id,
        })
    }
}

impl From<&ShardMapEvent> for pb::ShardMapEvent {
    fn from(e: &ShardMapEvent) -> Self {
        pb::ShardMapEvent {
            revision: e.revision,
            full: e.full,
            shards: e.shards.iter().map(Into::into).collect(),
            removed: e.removed.iter().map(|s| s.0).collect(),
        }
    }
}

impl TryFrom<pb::ShardMapEvent> for ShardMapEvent {
    type Error = ApiError;

    fn try_from(e: pb::ShardMapEvent) -> Result<Self, ApiError> {
        Ok(ShardMapEvent {
            revision: e.revision,
            full: e.full,
            shards: e.shards.into_iter().map(ShardRoute::try_from).collect::<Result<_, _>>()?,
            removed: e.removed.into_iter().map(ShardId).collect(),
        })
    }
}

impl From<&NodeInfo> for pb::NodeInfo {
    fn from(n: &NodeInfo) -> Self {
        pb::NodeInfo {
            id: n.id.0,
            addr: n.addr.clone(),
            state: n.state.as_str().to_string(),
            capacity_bytes: n.capacity_bytes,
            labels: n.labels.clone().into_iter().collect(),
            last_heartbeat_ms_ago: n.last_heartbeat_ms_ago.map(|v| v.max(1)).unwrap_or(0),
            replicas: n.replicas,
            leaders: n.leaders,
            size_bytes: n.size_bytes,
            db_bytes: n.db_bytes,
            pd_member: n.pd_member,
        }
    }
}

impl TryFrom<pb::NodeInfo> for NodeInfo {
    type Error = ApiError;

    fn try_from(n: pb::NodeInfo) -> Result<Self, ApiError> {
        Ok(NodeInfo {
            id: NodeId(n.id),
            addr: n.addr,
            state: NodeState::parse(&n.state)
                .ok_or_else(|| ApiError::InvalidArgument(format!("unknown node state {:?}", n.state)))?,
            capacity_bytes: n.capacity_bytes,
            labels: n.labels.into_iter().collect(),
            last_heartbeat_ms_ago: (n.last_heartbeat_ms_ago != 0).then_some(n.last_heartbeat_ms_ago),
            replicas: n.replicas,
            leaders: n.leaders,
            size_bytes: n.size_bytes,
            db_bytes: n.db_bytes,
            pd_member: n.pd_member,
        })
    }
}

impl From<&ShardInfo> for pb::ShardInfo {
    fn from(s: &ShardInfo) -> Self {
        pb::ShardInfo {
            route: Some((&s.route).into()),
            key_count: s.key_count,
            size_bytes: s.size_bytes,
            term: s.term,
            applied_index: s.applied_index,
        }
    }
}

impl TryFrom<pb::ShardInfo> for ShardInfo {
    type Error = ApiError;

    fn try_from(s: pb::ShardInfo) -> Result<Self, ApiError> {
        Ok(ShardInfo {
            route: s.route.ok_or_else(|| ApiError::InvalidArgument("shard info without route".into()))?.try_into()?,
            key_count: s.key_count,
            size_bytes: s.size_bytes,
            term: s.term,
            applied_index: s.applied_index,
        })
    }
}

impl From<&ClusterSettings> for pb::ClusterSettings {
    fn from(s: &ClusterSettings) -> Self {
        pb::ClusterSettings {
            replication_factor: s.replication_factor,
            max_node_down_time_ms: s.max_node_down_time_ms,
            split_size_bytes: s.split_size_bytes,
            split_keys: s.split_keys,
            max_moves_per_node: s.max_moves_per_node,
            max_operators: s.max_operators,
            snapshot_bytes_per_sec: s.snapshot_bytes_per_sec,
            operator_timeout_ms: s.operator_timeout_ms,
            balance_bytes_tolerance_percent: s.balance_bytes_tolerance_percent,
        }
    }
}

impl From<pb::ClusterSettings> for ClusterSettings {
    fn from(s: pb::ClusterSettings) -> Self {
        ClusterSettings {
            replication_factor: s.replication_factor,
            max_node_down_time_ms: s.max_node_down_time_ms,
            split_size_bytes: s.split_size_bytes,
            split_keys: s.split_keys,
            max_moves_per_node: s.max_moves_per_node,
            max_operators: s.max_operators,
            snapshot_bytes_per_sec: s.snapshot_bytes_per_sec,
            operator_timeout_ms: s.operator_timeout_ms,
            balance_bytes_tolerance_percent: s.balance_bytes_tolerance_percent,
        }
    }
}

impl From<&ClusterStatus> for pb::GetClusterResponse {
    fn from(c: &ClusterStatus) -> Self {
        let (pd_leader_id, pd_leader_addr) = c.pd_leader.clone().map(|(n, a)| (n.0, a)).unwrap_or_default();
        pb::GetClusterResponse {
            cluster_id: c.cluster_id,
            pd_leader_id,
            pd_leader_addr,
            pd_members: c.pd_members.iter().map(Into::into).collect(),
            nodes: c.nodes.iter().map(Into::into).collect(),
            shards: c.shards.iter().map(Into::into).collect(),
            settings: Some((&c.settings).into()),
            revision: c.revision,
            events: c
                .events
                .iter()
                .map(|e| pb::PdEvent { seq: e.seq, at_ms: e.at_ms, message: e.message.clone() })
                .collect(),
        }
    }
}

impl TryFrom<pb::GetClusterResponse> for ClusterStatus {
    type Error = ApiError;

    fn try_from(c: pb::GetClusterResponse) -> Result<Self, ApiError> {
        Ok(ClusterStatus {
            cluster_id: c.cluster_id,
            pd_leader: leader_of(c.pd_leader_id, c.pd_leader_addr),
            pd_members: c.pd_members.into_iter().map(NodeInfo::try_from).collect::<Result<_, _>>()?,
            nodes: c.nodes.into_iter().map(NodeInfo::try_from).collect::<Result<_, _>>()?,
            shards: c.shards.into_iter().map(ShardInfo::try_from).collect::<Result<_, _>>()?,
            settings: c.settings.map(ClusterSettings::from).unwrap_or_default(),
            revision: c.revision,
            events: c.events.into_iter().map(|e| PdEvent { seq: e.seq, at_ms: e.at_ms, message: e.message }).collect(),
        })
    }
}

// ---------------------------------------------- administrative RPCs (rebalancing)
//
// The request types below exist for the conversions: they are what the `Pd`
// service hands to the PD runtime's methods (`set_setting`, `create_operator`,
// `set_node_state`), validated.

/// Longest setting name or value `SetSetting` accepts.
pub const SETTING_BYTES_MAX: usize = 256;

/// `SetSetting`: change one cluster setting. `value` is parsed by the PD for
/// that setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    pub name: String,
    pub value: String,
}

impl SettingChange {
    /// The name is one of [`SETTING_NAMES`], and both are 1 to
    /// [`SETTING_BYTES_MAX`] bytes.
    pub fn validate(&self) -> Result<(), ApiError> {
        for (what, text) in [("name", &self.name), ("value", &self.value)] {
            if text.is_empty() || text.len() > SETTING_BYTES_MAX {
                return Err(ApiError::InvalidArgument(format!(
                    "a setting {what} must be 1 to {SETTING_BYTES_MAX} bytes"
                )));
            }
        }
        if !SETTING_NAMES.iter().any(|(n, _)| *n == self.name) {
            let known: Vec<&str> = SETTING_NAMES.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::InvalidArgument(format!(
                "unknown setting {:?} (known: {})",
                self.name,
                known.join(", ")
            )));
        }
        Ok(())
    }
}

/// `CreateOperator`: start an operator on a shard by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub shard: ShardId,
    pub kind: OperatorKind,
}

impl OperatorRequest {
    /// A well-formed kind. Shard 0 (the PD's own) takes operators too: its
    /// replicas move like any other's (RFC 004).
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_operator_kind(&self.kind)
    }
}

/// `SetNodeState`: drain, re-activate or remove a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStateChange {
    pub node: NodeId,
    pub state: AdminRequest,
}

impl NodeStateChange {
    pub fn validate(&self) -> Result<(), ApiError> {
        node_id(self.node.0, "a node state change").map(|_| ())
    }
}

fn validate_operator_kind(kind: &OperatorKind) -> Result<(), ApiError> {
    let ids = match kind {
        OperatorKind::MoveReplica { from, to } => {
            if from == to {
                return Err(ApiError::InvalidArgument(format!("move-replica from node {from} to itself")));
            }
            vec![*from, *to]
        }
        OperatorKind::AddReplica { to } | OperatorKind::TransferLeader { to } => vec![*to],
        OperatorKind::RemoveReplica { from } => vec![*from],
    };
    for id in ids {
        node_id(id.0, "an operator")?;
    }
    Ok(())
}

impl From<&SettingChange> for pb::SetSettingRequest {
    fn from(c: &SettingChange) -> Self {
        pb::SetSettingRequest { name: c.name.clone(), value: c.value.clone() }
    }
}

impl TryFrom<pb::SetSettingRequest> for SettingChange {
    type Error = ApiError;

    fn try_from(r: pb::SetSettingRequest) -> Result<Self, ApiError> {
        let change = SettingChange { name: r.name, value: r.value };
        change.validate()?;
        Ok(change)
    }
}

impl From<&OperatorKind> for pb::OperatorKind {
    fn from(k: &OperatorKind) -> Self {
        use pb::operator_kind::Kind;
        let kind = match k {
            OperatorKind::MoveReplica { from, to } => {
                Kind::MoveReplica(pb::MoveReplicaOperator { from_node_id: from.0, to_node_id: to.0 })
            }
            OperatorKind::AddReplica { to } => Kind::AddReplica(pb::AddReplicaOperator { to_node_id: to.0 }),
            OperatorKind::RemoveReplica { from } => {
                Kind::RemoveReplica(pb::RemoveReplicaOperator { from_node_id: from.0 })
            }
            OperatorKind::TransferLeader { to } => {
                Kind::TransferLeader(pb::TransferLeaderOperator { to_node_id: to.0 })
            }
        };
        pb::OperatorKind { kind: Some(kind) }
    }
}

impl TryFrom<Option<pb::OperatorKind>> for OperatorKind {
    type Error = ApiError;

    fn try_from(k: Option<pb::OperatorKind>) -> Result<Self, ApiError> {
        use pb::operator_kind::Kind;
        let kind = match k.and_then(|k| k.kind) {
            Some(Kind::MoveReplica(m)) => {
                OperatorKind::MoveReplica { from: NodeId(m.from_node_id), to: NodeId(m.to_node_id) }
            }
            Some(Kind::AddReplica(a)) => OperatorKind::AddReplica { to: NodeId(a.to_node_id) },
            Some(Kind::RemoveReplica(r)) => OperatorKind::RemoveReplica { from: NodeId(r.from_node_id) },
            Some(Kind::TransferLeader(t)) => OperatorKind::TransferLeader { to: NodeId(t.to_node_id) },
            None => return Err(ApiError::InvalidArgument("an operator without a kind".into())),
        };
        validate_operator_kind(&kind)?;
        Ok(kind)
    }
}

impl From<&OperatorRequest> for pb::CreateOperatorRequest {
    fn from(r: &OperatorRequest) -> Self {
        pb::CreateOperatorRequest { shard_id: r.shard.0, kind: Some((&r.kind).into()) }
    }
}

impl TryFrom<pb::CreateOperatorRequest> for OperatorRequest {
    type Error = ApiError;

    fn try_from(r: pb::CreateOperatorRequest) -> Result<Self, ApiError> {
        let request = OperatorRequest { shard: ShardId(r.shard_id), kind: OperatorKind::try_from(r.kind)? };
        request.validate()?;
        Ok(request)
    }
}

impl From<&OperatorInfo> for pb::OperatorInfo {
    fn from(o: &OperatorInfo) -> Self {
        pb::OperatorInfo {
            id: o.id,
            shard_id: o.shard.0,
            kind: Some((&o.kind).into()),
            reason: o.reason.clone(),
            step: o.step.clone(),
            age_ms: o.age_ms,
            snapshot_sent_bytes: o.snapshot_sent_bytes,
            snapshot_total_bytes: o.snapshot_total_bytes,
            rollback: o.rollback.clone(),
        }
    }
}

impl TryFrom<pb::OperatorInfo> for OperatorInfo {
    type Error = ApiError;

    fn try_from(o: pb::OperatorInfo) -> Result<Self, ApiError> {
        Ok(OperatorInfo {
            id: o.id,
            shard: ShardId(o.shard_id),
            kind: OperatorKind::try_from(o.kind)?,
            reason: o.reason,
            step: o.step,
            age_ms: o.age_ms,
            snapshot_sent_bytes: o.snapshot_sent_bytes,
            snapshot_total_bytes: o.snapshot_total_bytes,
            rollback: o.rollback,
        })
    }
}

impl From<&NodeStateChange> for pb::SetNodeStateRequest {
    fn from(c: &NodeStateChange) -> Self {
        pb::SetNodeStateRequest { node_id: c.node.0, state: c.state.as_str().to_string() }
    }
}

impl TryFrom<pb::SetNodeStateRequest> for NodeStateChange {
    type Error = ApiError;

    fn try_from(r: pb::SetNodeStateRequest) -> Result<Self, ApiError> {
        let state = AdminRequest::parse(&r.state).ok_or_else(|| {
            // The state is echoed only when short: it comes from the network.
            let shown: String = r.state.chars().take(32).collect();
            ApiError::InvalidArgument(format!("unknown node state {shown:?} (known: active, draining, removed)"))
        })?;
        let change = NodeStateChange { node: NodeId(r.node_id), state };
        change.validate()?;
        Ok(change)
    }
}

impl From<&NodeBalance> for pb::NodeBalance {
    fn from(b: &NodeBalance) -> Self {
        pb::NodeBalance {
            node_id: b.node.0,
            state: b.state.as_str().to_string(),
            replicas: b.replicas,
            leaders: b.leaders,
            size_bytes: b.size_bytes,
        }
    }
}

impl TryFrom<pb::NodeBalance> for NodeBalance {
    type Error = ApiError;

    fn try_from(b: pb::NodeBalance) -> Result<Self, ApiError> {
        Ok(NodeBalance {
            node: node_id(b.node_id, "a node balance")?,
            state: NodeState::parse(&b.state)
                .ok_or_else(|| ApiError::InvalidArgument(format!("unknown node state {:?}", b.state)))?,
            replicas: b.replicas,
            leaders: b.leaders,
            size_bytes: b.size_bytes,
        })
    }
}

impl From<&RebalanceStatus> for pb::RebalanceStatusResponse {
    fn from(r: &RebalanceStatus) -> Self {
        pb::RebalanceStatusResponse {
            nodes: r.nodes.iter().map(Into::into).collect(),
            mean_replicas: r.mean_replicas,
            replica_spread: r.replica_spread,
            leader_spread: r.leader_spread,
            under_replicated: r.under_replicated,
            misplaced: r.misplaced,
            operators: r.operators,
            balanced: r.balanced,
        }
    }
}

impl TryFrom<pb::RebalanceStatusResponse> for RebalanceStatus {
    type Error = ApiError;

    fn try_from(r: pb::RebalanceStatusResponse) -> Result<Self, ApiError> {
        if !(r.mean_replicas.is_finite() && r.mean_replicas >= 0.0) {
            return Err(ApiError::InvalidArgument(format!("mean replicas {} is not a count", r.mean_replicas)));
        }
        Ok(RebalanceStatus {
            nodes: r.nodes.into_iter().map(NodeBalance::try_from).collect::<Result<_, _>>()?,
            mean_replicas: r.mean_replicas,
            replica_spread: r.replica_spread,
            leader_spread: r.leader_spread,
            under_replicated: r.under_replicated,
            misplaced: r.misplaced,
            operators: r.operators,
            balanced: r.balanced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_round_trips() {
        let route = ShardRoute {
            descriptor: ShardDescriptor {
                id: ShardId(3),
                range: KeyRange::new(b"a".to_vec(), b"m".to_vec()),
                epoch: Epoch { conf_ver: 2, version: 1 },
                replicas: vec![ReplicaDescriptor { node: NodeId(1), addr: "x:1".into(), role: ReplicaRole::Voter }],
            },
            leader: Some((NodeId(1), "x:1".into())),
        };
        let node = NodeInfo {
            id: NodeId(1),
            addr: "x:1".into(),
            state: NodeState::Up,
            capacity_bytes: 0,
            labels: [("zone".to_string(), "a".to_string())].into(),
            last_heartbeat_ms_ago: Some(120),
            replicas: 1,
            leaders: 1,
            size_bytes: 10,
            db_bytes: 100,
            pd_member: true,
        };
        let status = ClusterStatus {
            cluster_id: 7,
            pd_leader: Some((NodeId(1), "x:1".into())),
            pd_members: vec![node.clone()],
            nodes: vec![node],
            shards: vec![ShardInfo { route, key_count: 4, size_bytes: 10, term: 2, applied_index: 9 }],
            settings: ClusterSettings::default(),
            revision: 12,
            events: vec![PdEvent { seq: 1, at_ms: 5, message: "bootstrapped".into() }],
        };
        let back = ClusterStatus::try_from(pb::GetClusterResponse::from(&status)).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.under_replicated(), 1, "1 voter < replication factor 3");
    }

    fn descriptor() -> ShardDescriptor {
        ShardDescriptor {
            id: ShardId(4),
            range: KeyRange::new(b"c".to_vec(), Vec::new()),
            epoch: Epoch { conf_ver: 5, version: 2 },
            replicas: vec![
                ReplicaDescriptor { node: NodeId(1), addr: "x:1".into(), role: ReplicaRole::Voter },
                ReplicaDescriptor { node: NodeId(4), addr: "x:4".into(), role: ReplicaRole::Learner },
            ],
        }
    }

    #[test]
    fn every_node_command_round_trips() {
        let commands = [
            NodeCommand::CreateReplica { descriptor: descriptor() },
            NodeCommand::JoinReplica { descriptor: descriptor() },
            NodeCommand::AddLearner { shard: ShardId(4), conf_ver: 5, node: NodeId(4), addr: "x:4".into() },
            NodeCommand::RemoveLearner { shard: ShardId(4), conf_ver: 6, node: NodeId(4) },
            NodeCommand::ChangeVoters { shard: ShardId(4), conf_ver: 6, voters: vec![NodeId(2), NodeId(3), NodeId(4)] },
            NodeCommand::TransferLeader { shard: ShardId(4), to: NodeId(2) },
            NodeCommand::DestroyReplica { shard: ShardId(4), conf_ver: 8 },
        ];
        for c in commands {
            let wire = pb::NodeCommand::from(&c);
            assert_eq!(NodeCommand::try_from(wire).unwrap(), c);
        }
    }

    #[test]
    fn heartbeat_with_progress_and_settings_round_trips() {
        let report = ReplicaReport {
            shard: ShardId(4),
            epoch: Epoch { conf_ver: 5, version: 2 },
            role: RaftRole::Leader,
            leader: Some(NodeId(1)),
            term: 3,
            applied_index: 40,
            key_count: 7,
            size_bytes: 700,
            replicas: descriptor().replicas,
            joint: true,
            last_log_index: 42,
            progress: vec![
                PeerProgress { node: NodeId(2), matched_index: 42, snapshot_sent_bytes: 0, snapshot_total_bytes: 0 },
                PeerProgress {
                    node: NodeId(4),
                    matched_index: 0,
                    snapshot_sent_bytes: 1 << 20,
                    snapshot_total_bytes: 3 << 20,
                },
            ],
        };
        let hb = Heartbeat {
            node: NodeId(1),
            cluster_id: 9,
            addr: "x:1".into(),
            stats: NodeStats::default(),
            replicas: vec![report],
            full: true,
            removed: vec![ShardId(2)],
        };
        assert_eq!(Heartbeat::try_from(pb::HeartbeatRequest::from(&hb)).unwrap(), hb);

        let settings = ClusterSettings {
            max_moves_per_node: 3,
            max_operators: 0,
            snapshot_bytes_per_sec: 1 << 20,
            operator_timeout_ms: 60_000,
            balance_bytes_tolerance_percent: 10,
            ..ClusterSettings::default()
        };
        let answer = HeartbeatAnswer {
            commands: vec![NodeCommand::DestroyReplica { shard: ShardId(4), conf_ver: 8 }],
            interval_ms: 250,
            full_report_wanted: true,
            settings: Some(settings),
        };
        assert_eq!(HeartbeatAnswer::try_from(pb::HeartbeatResponse::from(&answer)).unwrap(), answer);
        let without = HeartbeatAnswer::default();
        assert_eq!(HeartbeatAnswer::try_from(pb::HeartbeatResponse::from(&without)).unwrap(), without);
    }

    #[test]
    fn malformed_node_commands_are_rejected() {
        use pb::node_command::Command;
        let cmd = |c: Command| pb::NodeCommand { command: Some(c) };
        let bad = [
            cmd(Command::CreateReplica(pb::CreateReplica { descriptor: None })),
            cmd(Command::JoinReplica(pb::JoinReplica { descriptor: None })),
            cmd(Command::AddLearner(pb::AddLearner { shard_id: 1, conf_ver: 1, node_id: 0, addr: "x:1".into() })),
            cmd(Command::AddLearner(pb::AddLearner { shard_id: 1, conf_ver: 1, node_id: 2, addr: String::new() })),
            cmd(Command::AddLearner(pb::AddLearner { shard_id: 1, conf_ver: 1, node_id: 2, addr: "x".repeat(257) })),
            cmd(Command::RemoveLearner(pb::RemoveLearner { shard_id: 1, conf_ver: 1, node_id: 0 })),
            cmd(Command::ChangeVoters(pb::ChangeVoters { shard_id: 1, conf_ver: 1, voters: vec![] })),
            cmd(Command::ChangeVoters(pb::ChangeVoters { shard_id: 1, conf_ver: 1, voters: vec![1, 0] })),
            cmd(Command::ChangeVoters(pb::ChangeVoters { shard_id: 1, conf_ver: 1, voters: vec![1, 2, 1] })),
            cmd(Command::ChangeVoters(pb::ChangeVoters { shard_id: 1, conf_ver: 1, voters: (1..=17).collect() })),
            cmd(Command::TransferLeader(pb::TransferLeader { shard_id: 1, to_node_id: 0 })),
            pb::NodeCommand {
                command: Some(Command::CreateReplica(pb::CreateReplica {
                    descriptor: Some(pb::ShardDescriptor {
                        replicas: vec![pb::Replica { node_id: 1, addr: "x:1".into(), role: 9 }],
                        ..Default::default()
                    }),
                })),
            },
        ];
        for c in bad {
            let err = NodeCommand::try_from(c.clone()).expect_err(&format!("{c:?} must be refused"));
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{c:?}");
        }
        let report = pb::ReplicaReport {
            role: "leader".into(),
            progress: vec![pb::PeerProgress { node_id: 0, ..Default::default() }],
            ..Default::default()
        };
        assert!(ReplicaReport::try_from(report).is_err(), "progress of node 0");
    }

    #[test]
    fn admin_requests_round_trip() {
        let kinds = [
            OperatorKind::MoveReplica { from: NodeId(1), to: NodeId(4) },
            OperatorKind::AddReplica { to: NodeId(4) },
            OperatorKind::RemoveReplica { from: NodeId(1) },
            OperatorKind::TransferLeader { to: NodeId(2) },
        ];
        for kind in kinds {
            let req = OperatorRequest { shard: ShardId(3), kind: kind.clone() };
            assert_eq!(OperatorRequest::try_from(pb::CreateOperatorRequest::from(&req)).unwrap(), req);
            let info = OperatorInfo {
                id: 17,
                shard: ShardId(3),
                kind,
                reason: "admin".into(),
                step: "catch-up".into(),
                age_ms: 1500,
                snapshot_sent_bytes: 10 << 20,
                snapshot_total_bytes: 40 << 20,
                rollback: Some("target down".into()),
            };
            assert_eq!(OperatorInfo::try_from(pb::OperatorInfo::from(&info)).unwrap(), info);
            let not_rolling_back = OperatorInfo { rollback: None, ..info };
            let wire = pb::OperatorInfo::from(&not_rolling_back);
            assert_eq!(OperatorInfo::try_from(wire).unwrap(), not_rolling_back);
        }
        for (name, _) in SETTING_NAMES {
            let change = SettingChange { name: name.to_string(), value: "5".into() };
            assert_eq!(SettingChange::try_from(pb::SetSettingRequest::from(&change)).unwrap(), change);
        }
        for state in [AdminRequest::Active, AdminRequest::Draining, AdminRequest::Removed] {
            let change = NodeStateChange { node: NodeId(2), state };
            assert_eq!(NodeStateChange::try_from(pb::SetNodeStateRequest::from(&change)).unwrap(), change);
        }
        let status = RebalanceStatus {
            nodes: vec![
                NodeBalance { node: NodeId(1), state: NodeState::Up, replicas: 4, leaders: 2, size_bytes: 4 << 20 },
                NodeBalance { node: NodeId(2), state: NodeState::Draining, replicas: 1, leaders: 0, size_bytes: 5 },
            ],
            mean_replicas: 2.5,
            replica_spread: 3,
            leader_spread: 2,
            under_replicated: 1,
            misplaced: 1,
            operators: 2,
            balanced: false,
        };
        assert_eq!(RebalanceStatus::try_from(pb::RebalanceStatusResponse::from(&status)).unwrap(), status);
    }

    #[test]
    fn malformed_admin_requests_are_rejected() {
        let invalid = |r: Result<(), ApiError>| matches!(r, Err(ApiError::InvalidArgument(_)));
        let op = |shard: u64, kind: Option<pb::operator_kind::Kind>| {
            OperatorRequest::try_from(pb::CreateOperatorRequest {
                shard_id: shard,
                kind: Some(pb::OperatorKind { kind }),
            })
            .map(|_| ())
        };
        use pb::operator_kind::Kind;
        let transfer = |to| Some(Kind::TransferLeader(pb::TransferLeaderOperator { to_node_id: to }));
        assert!(op(3, transfer(2)).is_ok());
        assert!(op(0, transfer(2)).is_ok(), "the PD's own shard moves too");
        assert!(invalid(op(3, transfer(0))), "node 0");
        assert!(invalid(op(3, None)), "no kind");
        let same = Some(Kind::MoveReplica(pb::MoveReplicaOperator { from_node_id: 2, to_node_id: 2 }));
        assert!(invalid(op(3, same)), "a move to itself");
        let no_kind = pb::CreateOperatorRequest { shard_id: 3, kind: None };
        assert!(OperatorRequest::try_from(no_kind).is_err());
        let info = pb::OperatorInfo { shard_id: 3, kind: None, ..Default::default() };
        assert!(OperatorInfo::try_from(info).is_err());

        let setting = |name: &str, value: &str| {
            SettingChange::try_from(pb::SetSettingRequest { name: name.into(), value: value.into() }).map(|_| ())
        };
        assert!(setting("max-operators", "4").is_ok());
        assert!(invalid(setting("no-such-setting", "4")));
        assert!(invalid(setting("max-operators", "")));
        assert!(invalid(setting("max-operators", &"9".repeat(257))));
        assert!(invalid(setting(&"x".repeat(257), "1")));

        let node_state = |node_id: u64, state: &str| {
            NodeStateChange::try_from(pb::SetNodeStateRequest { node_id, state: state.into() }).map(|_| ())
        };
        assert!(node_state(2, "draining").is_ok());
        assert!(invalid(node_state(0, "draining")));
        assert!(invalid(node_state(2, "up")), "only the admin states");
        assert!(invalid(node_state(2, &"z".repeat(10_000))));

        let nan = pb::RebalanceStatusResponse { mean_replicas: f64::NAN, ..Default::default() };
        assert!(RebalanceStatus::try_from(nan).is_err());
        let bad_node = pb::RebalanceStatusResponse {
            nodes: vec![pb::NodeBalance { node_id: 1, state: "sleepy".into(), ..Default::default() }],
            ..Default::default()
        };
        assert!(RebalanceStatus::try_from(bad_node).is_err());
    }

    #[test]
    fn bad_wire_values_are_rejected() {
        let n = pb::NodeInfo { state: "sleepy".into(), ..Default::default() };
        assert!(NodeInfo::try_from(n).is_err());
        let r = pb::RegisterNodeRequest { addr: String::new(), ..Default::default() };
        assert!(RegisterNode::try_from(r).is_err());
        assert!(NodeCommand::try_from(pb::NodeCommand { command: None }).is_err());
        assert!(Heartbeat::try_from(pb::HeartbeatRequest::default()).is_err());
    }
}
