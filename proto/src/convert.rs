//! Conversions between generated `pb` types and domain types. This is the only
//! place that maps one to the other. Conversions from the wire validate and
//! return [`ApiError::InvalidArgument`] instead of panicking.

use crate::error::ApiError;
use crate::pb;
use crate::types::*;

impl From<Epoch> for pb::Epoch {
    fn from(e: Epoch) -> Self {
        pb::Epoch { conf_ver: e.conf_ver, version: e.version }
    }
}

impl From<pb::Epoch> for Epoch {
    fn from(e: pb::Epoch) -> Self {
        Epoch { conf_ver: e.conf_ver, version: e.version }
    }
}

impl From<&ShardDescriptor> for pb::ShardDescriptor {
    fn from(d: &ShardDescriptor) -> Self {
        pb::ShardDescriptor {
            id: d.id.0,
            start: d.range.start.clone(),
            end: d.range.end.clone(),
            epoch: Some(d.epoch.into()),
            replicas: d
                .replicas
                .iter()
                .map(|r| pb::Replica {
                    node_id: r.node.0,
                    addr: r.addr.clone(),
                    role: match r.role {
                        ReplicaRole::Voter => pb::ReplicaRole::Voter as i32,
                        ReplicaRole::Learner => pb::ReplicaRole::Learner as i32,
                    },
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ShardDescriptor> for ShardDescriptor {
    type Error = ApiError;

    fn try_from(d: pb::ShardDescriptor) -> Result<Self, ApiError> {
        let replicas = d
            .replicas
            .into_iter()
            .map(|r| {
                let role = match pb::ReplicaRole::try_from(r.role) {
                    Ok(pb::ReplicaRole::Voter) => ReplicaRole::Voter,
                    Ok(pb::ReplicaRole::Learner) => ReplicaRole::Learner,
                    _ => return Err(ApiError::InvalidArgument(format!("unknown replica role {}", r.role))),
                };
                Ok(ReplicaDescriptor { node: NodeId(r.node_id), addr: r.addr, role })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardDescriptor {
            id: ShardId(d.id),
            range: KeyRange { start: d.start, end: d.end },
            epoch: d.epoch.map(Epoch::from).unwrap_or_default(),
            replicas,
        })
    }
}

impl From<Route> for pb::RouteHeader {
    fn from(r: Route) -> Self {
        pb::RouteHeader { shard_id: r.shard.0, epoch: Some(r.epoch.into()) }
    }
}

impl TryFrom<Option<pb::RouteHeader>> for Route {
    type Error = ApiError;

    fn try_from(r: Option<pb::RouteHeader>) -> Result<Self, ApiError> {
        let r = r.ok_or_else(|| ApiError::InvalidArgument("the request has no route header".into()))?;
        let epoch = r.epoch.ok_or_else(|| ApiError::InvalidArgument("the route header has no epoch".into()))?;
        Ok(Route { shard: ShardId(r.shard_id), epoch: epoch.into() })
    }
}

impl From<Session> for pb::Session {
    fn from(s: Session) -> Self {
        pb::Session { client_id: s.client_id, seq: s.seq, acked_below: s.acked_below }
    }
}

impl From<Option<pb::Session>> for Session {
    fn from(s: Option<pb::Session>) -> Self {
        s.map(|s| Session { client_id: s.client_id, seq: s.seq, acked_below: s.acked_below }).unwrap_or_default()
    }
}

impl From<Document> for pb::Document {
    fn from(d: Document) -> Self {
        pb::Document {
            key: d.key,
            value: d.value,
            version: d.version,
            created_at_ms: d.created_at_ms,
            updated_at_ms: d.updated_at_ms,
        }
    }
}

impl From<pb::Document> for Document {
    fn from(d: pb::Document) -> Self {
        Document {
            key: d.key,
            value: d.value,
            version: d.version,
            created_at_ms: d.created_at_ms,
            updated_at_ms: d.updated_at_ms,
        }
    }
}

impl From<&ShardStatus> for pb::ShardStatus {
    fn from(s: &ShardStatus) -> Self {
        pb::ShardStatus {
            descriptor: Some((&s.descriptor).into()),
            role: s.role.as_str().to_string(),
            leader_id: s.leader.map(|n| n.0),
            leader_addr: s.leader_addr.clone(),
            term: s.term,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
        }
    }
}

impl TryFrom<pb::ShardStatus> for ShardStatus {
    type Error = ApiError;

    fn try_from(s: pb::ShardStatus) -> Result<Self, ApiError> {
        let descriptor = s
            .descriptor
            .ok_or_else(|| ApiError::InvalidArgument("shard status without descriptor".into()))?
            .try_into()?;
        let role = RaftRole::parse(&s.role)
            .ok_or_else(|| ApiError::InvalidArgument(format!("unknown raft role {:?}", s.role)))?;
        Ok(ShardStatus {
            descriptor,
            role,
            leader: s.leader_id.map(NodeId),
            leader_addr: s.leader_addr,
            term: s.term,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
        })
    }
}

impl From<&NodeStats> for pb::NodeStatsResponse {
    fn from(s: &NodeStats) -> Self {
        pb::NodeStatsResponse {
            node_id: s.node_id.0,
            addr: s.addr.clone(),
            shard_count: s.shard_count,
            fsyncs: s.fsyncs,
            log_entries_persisted: s.log_entries_persisted,
            write_batches: s.write_batches,
            db_bytes: s.db_bytes,
        }
    }
}

impl From<pb::NodeStatsResponse> for NodeStats {
    fn from(s: pb::NodeStatsResponse) -> Self {
        NodeStats {
            node_id: NodeId(s.node_id),
            addr: s.addr,
            shard_count: s.shard_count,
            fsyncs: s.fsyncs,
            log_entries_persisted: s.log_entries_persisted,
            write_batches: s.write_batches,
            db_bytes: s.db_bytes,
        }
    }
}
