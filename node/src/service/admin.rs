//! `cairn.v1.Admin`: what this node hosts and its counters.

use std::sync::Arc;

use cairn_proto::pb;
use tonic::{Request, Response, Status};

use crate::node::NodeShared;

pub struct AdminService {
    pub node: Arc<NodeShared>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_shards(&self, _: Request<pb::ListShardsRequest>) -> Result<Response<pb::ListShardsResponse>, Status> {
        let shards = self.node.shard_statuses().iter().map(Into::into).collect();
        Ok(Response::new(pb::ListShardsResponse { node_id: self.node.id.0, shards }))
    }

    async fn node_stats(&self, _: Request<pb::NodeStatsRequest>) -> Result<Response<pb::NodeStatsResponse>, Status> {
        Ok(Response::new((&self.node.stats()).into()))
    }
}
