//! gRPC edge of the placement driver (service `Pd`), served by every node.
//!
//! The PD leader answers from its runtime ([`crate::pd::PdRuntime`]). A PD
//! follower forwards to the leader it knows, marking the request as forwarded;
//! a node that is not a PD member (hosts no replica of shard 0 right now)
//! forwards through its own PD client (with failover over the PD endpoints it
//! was started with, itself excluded). So any node's address works as a PD
//! endpoint for clients, and membership can change under them (RFC 004).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::pd_client::FORWARDED_HEADER;
use cairn_client::{ClientConfig, PdClient};
use cairn_proto::pb::pd_server::Pd;
use cairn_proto::{
    ApiError, Heartbeat, KeyRange, NodeStateChange, OperatorRequest, RegisterNode, SettingChange, ShardMapEvent, pb,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::NodeShared;
use crate::pd::{PD_SHARD, PdRuntime};

/// Watch events buffered per watcher before the sender waits.
const WATCH_BUFFER: usize = 64;
/// Cached clients of PD leaders to forward to.
const FORWARD_CLIENTS_MAX: usize = 16;

pub struct PdService {
    pub node: Arc<NodeShared>,
    forward: Mutex<HashMap<String, PdClient>>,
}

enum Upstream {
    Local(Arc<PdRuntime>),
    Remote(PdClient),
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ShardMapEvent, Status>> + Send>>;

impl PdService {
    pub fn new(node: Arc<NodeShared>) -> Self {
        Self { node, forward: Mutex::new(HashMap::new()) }
    }

    fn upstream<T>(&self, request: &Request<T>) -> Result<Upstream, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let pd = &self.node.pd;
        if !pd.is_member() {
            if forwarded {
                return Err(ApiError::Unavailable(format!("node {} is not a PD member", self.node.id)).to_status());
            }
            return Ok(Upstream::Remote(self.node.pd_client()));
        }
        if pd.is_leader() {
            return Ok(Upstream::Local(pd.clone()));
        }
        let hint = pd.leader_hint();
        match hint {
            Some((_, addr)) if !forwarded => Ok(Upstream::Remote(self.forward_client(&addr)?)),
            leader if forwarded => Err(ApiError::NotLeader { shard: PD_SHARD, leader }.to_status()),
            _ => Err(ApiError::Unavailable("the placement driver has no leader yet".into()).to_status()),
        }
    }

    fn forward_client(&self, addr: &str) -> Result<PdClient, Status> {
        let mut clients = self.forward.lock().expect("forward clients lock");
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            max_attempts: 1,
            request_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            net: self.node.net.clone(),
            ..Default::default()
        };
        let client = PdClient::new([addr], config).map_err(|e| e.to_status())?.forwarding();
        if clients.len() >= FORWARD_CLIENTS_MAX {
            clients.clear();
        }
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// Records a request this node answered as PD leader.
fn counted<T>(op: &'static str, r: Result<T, ApiError>) -> Result<T, ApiError> {
    crate::metrics::pd_request(op, &r);
    r
}

fn status(e: ApiError) -> Status {
    e.to_status()
}

#[tonic::async_trait]
impl Pd for PdService {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let up = self.upstream(&request)?;
        let req = RegisterNode::try_from(request.into_inner()).map_err(status)?;
        let (node, cluster_id) = match up {
            Upstream::Local(pd) => counted("register", pd.register(req).await),
            Upstream::Remote(c) => c.register_node(&req).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::RegisterNodeResponse { node_id: node.0, cluster_id }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let up = self.upstream(&request)?;
        let hb = Heartbeat::try_from(request.into_inner()).map_err(status)?;
        let answer = match up {
            Upstream::Local(pd) => counted("heartbeat", pd.heartbeat(hb).await),
            Upstream::Remote(c) => c.heartbeat(&hb).await,
        }
        .map_err(status)?;
        Ok(Response::new((&answer).into()))
    }

    async fn locate(&self, request: Request<pb::LocateRequest>) -> Result<Response<pb::LocateResponse>, Status> {
        let up = self.upstream(&request)?;
        let key = request.into_inner().key;
        let (route, revision) = match up {
            Upstream::Local(pd) => counted("locate", pd.locate(&key).await),
            Upstream::Remote(c) => c.locate(&key).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::LocateResponse { route: Some((&route).into()), revision }))
    }

    async fn list_shards(
        &self,
        request: Request<pb::PdListShardsRequest>,
    ) -> Result<Response<pb::PdListShardsResponse>, Status> {
        let up = self.upstream(&request)?;
        let req = request.into_inner();
        let range = KeyRange { start: req.start, end: req.end };
        let (routes, revision) = match up {
            Upstream::Local(pd) => counted("list_shards", pd.list_shards(&range, req.limit).await),
            Upstream::Remote(c) => c.list_shards(&range, req.limit).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::PdListShardsResponse { shards: routes.iter().map(Into::into).collect(), revision }))
    }

    type WatchShardsStream = EventStream;

    async fn watch_shards(
        &self,
        request: Request<pb::WatchShardsRequest>,
    ) -> Result<Response<Self::WatchShardsStream>, Status> {
        let up = self.upstream(&request)?;
        let from = request.into_inner().from_revision;
        let stream: EventStream = match up {
            Upstream::Local(pd) => {
                let (first, rx) = counted("watch", pd.watch(from).await).map_err(status)?;
                let (tx, out) = mpsc::channel(WATCH_BUFFER);
                tokio::spawn(feed_watcher(pd, first, rx, tx));
                Box::pin(ReceiverStream::new(out))
            }
            Upstream::Remote(c) => {
                let upstream = c.watch_shards(from).await.map_err(status)?;
                Box::pin(upstream.map(|e| e.map(|e| pb::ShardMapEvent::from(&e)).map_err(status)))
            }
        };
        Ok(Response::new(stream))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        let up = self.upstream(&request)?;
        let events = request.into_inner().events;
        let cluster = match up {
            Upstream::Local(pd) => counted("cluster", pd.cluster(events).await),
            Upstream::Remote(c) => c.cluster(events).await,
        }
        .map_err(status)?;
        Ok(Response::new((&cluster).into()))
    }

    async fn set_setting(
        &self,
        request: Request<pb::SetSettingRequest>,
    ) -> Result<Response<pb::SetSettingResponse>, Status> {
        let up = self.upstream(&request)?;
        let change = SettingChange::try_from(request.into_inner()).map_err(status)?;
        let settings = match up {
            Upstream::Local(pd) => counted("set_setting", pd.set_setting(&change.name, &change.value).await),
            Upstream::Remote(c) => c.set_setting(&change.name, &change.value).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::SetSettingResponse { settings: Some((&settings).into()) }))
    }

    async fn create_operator(
        &self,
        request: Request<pb::CreateOperatorRequest>,
    ) -> Result<Response<pb::CreateOperatorResponse>, Status> {
        let up = self.upstream(&request)?;
        let req = OperatorRequest::try_from(request.into_inner()).map_err(status)?;
        let operator = match up {
            Upstream::Local(pd) => counted("create_operator", pd.create_operator(req.shard, req.kind).await),
            Upstream::Remote(c) => c.create_operator(req.shard, req.kind).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::CreateOperatorResponse { operator: Some((&operator).into()) }))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        let up = self.upstream(&request)?;
        let operators = match up {
            Upstream::Local(pd) => counted("list_operators", pd.list_operators().await),
            Upstream::Remote(c) => c.list_operators().await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::ListOperatorsResponse { operators: operators.iter().map(Into::into).collect() }))
    }

    async fn set_node_state(
        &self,
        request: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::SetNodeStateResponse>, Status> {
        let up = self.upstream(&request)?;
        let change = NodeStateChange::try_from(request.into_inner()).map_err(status)?;
        let node = match up {
            Upstream::Local(pd) => counted("set_node_state", pd.set_node_state(change.node, change.state).await),
            Upstream::Remote(c) => c.set_node_state(change.node, change.state).await,
        }
        .map_err(status)?;
        Ok(Response::new(pb::SetNodeStateResponse { node: Some((&node).into()) }))
    }

    async fn rebalance_status(
        &self,
        request: Request<pb::RebalanceStatusRequest>,
    ) -> Result<Response<pb::RebalanceStatusResponse>, Status> {
        let up = self.upstream(&request)?;
        let report = match up {
            Upstream::Local(pd) => counted("rebalance_status", pd.rebalance_status().await),
            Upstream::Remote(c) => c.rebalance_status().await,
        }
        .map_err(status)?;
        Ok(Response::new((&report).into()))
    }
}

/// Sends a watcher its first events, then every change, until the watcher
/// goes away or this member stops leading (the broadcast closes). A watcher
/// that fell behind gets the whole map again.
async fn feed_watcher(
    pd: Arc<PdRuntime>,
    first: Vec<ShardMapEvent>,
    mut rx: broadcast::Receiver<ShardMapEvent>,
    tx: mpsc::Sender<Result<pb::ShardMapEvent, Status>>,
) {
    let mut last = 0;
    for e in first {
        last = e.revision;
        if tx.send(Ok((&e).into())).await.is_err() {
            return;
        }
    }
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return,
            r = rx.recv() => r,
        };
        let event = match event {
            Ok(e) if e.revision <= last => continue,
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => match pd.full_map().await {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(e.to_status())).await;
                    return;
                }
            },
            Err(broadcast::error::RecvError::Closed) => {
                let e = ApiError::Unavailable("this PD member stopped leading; watch again".into());
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
        };
        last = event.revision;
        if tx.send(Ok((&event).into())).await.is_err() {
            return;
        }
    }
}
