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
    /// Leaders only: the group's replicas as of `epoch.conf_ver`.
    pub replicas: Vec<ReplicaDescriptor>,
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
    /// Milliseconds until the next heartbeat (0: keep the configured interval).
    pub interval_ms: u64,
    /// Send every replica in the next heartbeat.
    pub full_report_wanted: bool,
}

/// An instruction from the PD to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeCommand {
    /// Create a replica of a new shard, initialising its group with the
    /// descriptor's voters. Idempotent.
    CreateReplica { descriptor: ShardDescriptor },
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

/// Cluster-wide settings, owned by the PD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub replication_factor: u32,
    pub max_node_down_time_ms: u64,
    pub split_size_bytes: u64,
    pub split_keys: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            max_node_down_time_ms: 30 * 60 * 1000,
            split_size_bytes: 96 << 20,
            split_keys: 1_000_000,
        }
    }
}

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
        let command = match c {
            NodeCommand::CreateReplica { descriptor } => {
                pb::node_command::Command::CreateReplica(pb::CreateReplica { descriptor: Some(descriptor.into()) })
            }
        };
        pb::NodeCommand { command: Some(command) }
    }
}

impl TryFrom<pb::NodeCommand> for NodeCommand {
    type Error = ApiError;

    fn try_from(c: pb::NodeCommand) -> Result<Self, ApiError> {
        match c.command {
            Some(pb::node_command::Command::CreateReplica(c)) => Ok(NodeCommand::CreateReplica {
                descriptor: c
                    .descriptor
                    .ok_or_else(|| ApiError::InvalidArgument("create-replica without descriptor".into()))?
                    .try_into()?,
            }),
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
