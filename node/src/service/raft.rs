//! `cairn.v1.Raft`: batches of Raft messages from peers, and snapshot streams.

use std::sync::Arc;

use cairn_proto::{ApiError, ShardId, pb};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::node::NodeShared;
use crate::raft::snapshot_recv::SnapshotPart;
use crate::transport::MessageKind;

pub struct RaftService {
    pub node: Arc<NodeShared>,
}

fn reply_error(e: ApiError) -> pb::RaftReply {
    pb::RaftReply { result: Some(pb::raft_reply::Result::Error(e.to_pb())) }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn send(&self, req: Request<pb::RaftBatch>) -> Result<Response<pb::RaftBatchReply>, Status> {
        let batch = req.into_inner();
        if batch.to_node != self.node.id.0 {
            return Err(ApiError::InvalidArgument(format!(
                "batch for node {} reached node {}",
                batch.to_node, self.node.id.0
            ))
            .to_status());
        }
        // Messages of different groups are independent: deliver them concurrently.
        let replies = futures::future::join_all(batch.messages.into_iter().map(|m| async move {
            let shard = ShardId(m.shard_id);
            let Some(kind) = MessageKind::from_pb(m.kind) else {
                return reply_error(ApiError::InvalidArgument(format!("unknown message kind {}", m.kind)));
            };
            let Some(replica) = self.node.registry.get(shard) else {
                return reply_error(ApiError::ShardNotFound { shard });
            };
            match replica.group.handle_message(kind, &m.payload).await {
                Ok(payload) => pb::RaftReply { result: Some(pb::raft_reply::Result::Payload(payload)) },
                Err(crate::raft::GroupError::Invalid(e)) => reply_error(ApiError::InvalidArgument(e)),
                Err(e) => reply_error(ApiError::Unavailable(e.to_string())),
            }
        }))
        .await;
        Ok(Response::new(pb::RaftBatchReply { replies }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| ApiError::InvalidArgument("empty snapshot stream".into()).to_status())??;
        let Some(pb::snapshot_chunk::Part::Header(h)) = first.part else {
            return Err(ApiError::InvalidArgument("a snapshot stream must start with its header".into()).to_status());
        };
        if h.to_node != self.node.id.0 {
            return Err(ApiError::InvalidArgument(format!(
                "snapshot for node {} reached node {}",
                h.to_node, self.node.id.0
            ))
            .to_status());
        }
        let shard = ShardId(h.shard_id);
        let replica = self.node.registry.get(shard).ok_or_else(|| ApiError::ShardNotFound { shard }.to_status())?;
        let parts = stream.map(|chunk| {
            let chunk = chunk.map_err(|s| ApiError::Unavailable(s.message().to_string()))?;
            Ok(match chunk.part {
                Some(pb::snapshot_chunk::Part::Header(h)) => {
                    SnapshotPart::Header { shard: h.shard_id, vote: h.vote, meta: h.meta, shard_state: h.shard_state }
                }
                Some(pb::snapshot_chunk::Part::Data(d)) => {
                    SnapshotPart::Data { records: d.records, record_count: d.record_count, crc32: d.crc32 }
                }
                Some(pb::snapshot_chunk::Part::Trailer(t)) => {
                    SnapshotPart::Trailer { total_records: t.total_records, total_bytes: t.total_bytes }
                }
                None => return Err(ApiError::InvalidArgument("empty snapshot chunk".into())),
            })
        });
        let payload = replica
            .group
            .receive_snapshot(h.vote, h.meta, h.shard_state, Box::pin(parts))
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::SnapshotReply { payload }))
    }
}
