//! openraft's network for shard groups over the node's shared transport.
//! `GroupRouter` (from `openraft-multi`) gives each group an adapter that
//! tags messages with the shard id; all groups share one [`Transport`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::ShardId;
use openraft::AnyError;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use openraft_multi::{GroupNetworkAdapter, GroupRouter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{Snapshot, TypeConfig, Vote};
use crate::storage::codec::{decode, encode};
use crate::storage::snapshot::SnapshotView;
use crate::storage::tables::SnapshotShardState;
use crate::transport::{MessageKind, SnapshotOffer, Transport, TransportError};

#[derive(Clone)]
pub struct ShardRouter {
    transport: Arc<Transport>,
}

impl ShardRouter {
    pub fn new(transport: Arc<Transport>) -> Self {
        Self { transport }
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: u64,
        shard: ShardId,
        kind: MessageKind,
        urgent: bool,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = encode(req);
        // openraft gives every RPC the heartbeat interval as its deadline. An
        // append that carries entries waits for the follower's fsync, which on a
        // loaded machine can exceed that; timing it out only resends it and
        // stalls replication. Such appends get the transport's RPC deadline.
        let timeout = if urgent {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(Duration::from_millis(self.transport.config().rpc_timeout_ms))
        };
        let reply =
            self.transport.call(target, shard.0, kind, payload, urgent, timeout).await.map_err(|e| unreachable(&e))?;
        decode(&reply).map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(format!("bad reply: {e}")))))
    }
}

fn unreachable(e: &TransportError) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

impl GroupRouter<TypeConfig, ShardId> for ShardRouter {
    type SnapshotData = SnapshotView;

    async fn append_entries(
        &self,
        target: u64,
        group_id: ShardId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // An append without entries is a heartbeat.
        let urgent = rpc.entries.is_empty();
        self.rpc(target, group_id, MessageKind::AppendEntries, urgent, &rpc, &option).await
    }

    async fn vote(
        &self,
        target: u64,
        group_id: ShardId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(target, group_id, MessageKind::Vote, true, &rpc, &option).await
    }

    async fn pre_vote(
        &self,
        target: u64,
        group_id: ShardId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(target, group_id, MessageKind::PreVote, true, &rpc, &option).await
    }

    async fn full_snapshot(
        &self,
        target: u64,
        group_id: ShardId,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let offer = SnapshotOffer {
            shard: group_id.0,
            vote: encode(&vote),
            meta: encode(&snapshot.meta),
            shard_state: encode(&SnapshotShardState {
                descriptor: snapshot.snapshot.record.descriptor.clone(),
                stats: snapshot.snapshot.record.stats,
            }),
            total_bytes: snapshot.snapshot.record.stats.size_bytes,
        };
        let reader = snapshot.snapshot.reader();
        let started = std::time::Instant::now();
        let cancel = async move {
            cancel.await;
        };
        match self.transport.send_snapshot(target, offer, reader, cancel).await {
            Ok((reply, sent)) => {
                crate::metrics::snapshot_sent(sent.bytes, started.elapsed());
                tracing::info!(shard = %group_id, peer = target, records = sent.records, bytes = sent.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64, "snapshot sent");
                decode(&reply).map_err(|e| {
                    StreamingError::Unreachable(Unreachable::new(&AnyError::error(format!("bad reply: {e}"))))
                })
            }
            Err(TransportError::Closed) => {
                crate::metrics::snapshot_send_failed("cancelled");
                Err(StreamingError::Closed(ReplicationClosed::new("cancelled")))
            }
            Err(e) => {
                crate::metrics::snapshot_send_failed("error");
                tracing::info!(shard = %group_id, peer = target, error = %e, "snapshot not sent");
                Err(StreamingError::Unreachable(Unreachable::new(&AnyError::error(e.to_string()))))
            }
        }
    }

    async fn transfer_leader(
        &self,
        target: u64,
        group_id: ShardId,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(target, group_id, MessageKind::TransferLeader, true, &req, &option).await
    }
}

/// The network factory of one shard group.
pub struct ShardNetworkFactory {
    pub router: ShardRouter,
    pub shard: ShardId,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, ShardId, ShardRouter>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        self.router.transport.set_peer_addr(target, &node.addr);
        GroupNetworkAdapter::new(self.router.clone(), target, self.shard)
    }
}
