//! [`PdClient`]: a typed client of the placement driver (service `Pd`) over a
//! list of PD member endpoints, with failover between them.
//!
//! Invariants:
//! - Every PD member answers every call (a follower forwards to the PD leader),
//!   so failover only has to find a member that is up: on `UNAVAILABLE` or a
//!   deadline the next endpoint is tried, after a jittered backoff.
//! - A call is bounded by `max_attempts` and `operation_timeout` of the
//!   [`ClientConfig`]; each RPC by `request_timeout`.
//! - The endpoint that answered last is tried first next time.
//! - Generated `pb` types stay inside this module.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use cairn_proto::pb::pd_client::PdClient as PdGrpc;
use cairn_proto::{
    AdminRequest, ApiError, ClusterSettings, ClusterStatus, Heartbeat, HeartbeatAnswer, KeyRange, NodeId, NodeInfo,
    NodeStateChange, OperatorInfo, OperatorKind, OperatorRequest, RebalanceStatus, RegisterNode, SettingChange,
    ShardId, ShardMapEvent, ShardRoute, pb,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::retry::backoff_delay;

/// How often an idle connection to a PD member is pinged, and how long a ping may go
/// unanswered before the connection (and any watch stream on it) is declared dead.
const PD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const PD_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream of shard-map changes from `WatchShards`. It ends (or yields an
/// error) when the serving PD member goes away; the caller re-subscribes from
/// the last revision it saw.
pub type ShardMapStream = Pin<Box<dyn Stream<Item = Result<ShardMapEvent, ApiError>> + Send>>;

#[derive(Clone, Debug)]
struct Member {
    addr: Arc<str>,
    grpc: PdGrpc<Channel>,
}

/// A client of the placement driver. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct PdClient {
    members: Arc<[Member]>,
    preferred: Arc<AtomicUsize>,
    config: ClientConfig,
    forwarded: bool,
}

/// Metadata key marking a request one PD member forwarded to another; a
/// member that is not the leader answers such a request with `NOT_LEADER`
/// instead of forwarding it again (no forwarding loops during elections).
pub const FORWARDED_HEADER: &str = "cairn-forwarded";

impl PdClient {
    /// A client of the PD reachable at any of `endpoints` (`host:port`). Connections
    /// are made lazily. Fails with `InvalidArgument` on an empty list or a bad address.
    pub fn new<I, S>(endpoints: I, config: ClientConfig) -> Result<Self, ApiError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        config.validate()?;
        let mut members = Vec::new();
        for addr in endpoints {
            let addr = addr.as_ref().trim();
            if addr.is_empty() {
                continue;
            }
            let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| ApiError::InvalidArgument(format!("bad PD address {addr:?}: {e}")))?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                // A watch stream over a half-open connection (the member's host vanished)
                // would otherwise wait forever; pings detect it.
                .http2_keep_alive_interval(PD_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(PD_KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            let grpc = PdGrpc::new(config.net.channel(&endpoint))
                .max_decoding_message_size(config.message_bytes_max)
                .max_encoding_message_size(config.message_bytes_max);
            members.push(Member { addr: addr.into(), grpc });
        }
        if members.is_empty() {
            return Err(ApiError::InvalidArgument("no PD endpoints given".into()));
        }
        Ok(Self { members: members.into(), preferred: Arc::new(AtomicUsize::new(0)), config, forwarded: false })
    }

    /// Parses a comma-separated endpoint list (`a:1,b:2`).
    pub fn from_list(endpoints: &str, config: ClientConfig) -> Result<Self, ApiError> {
        Self::new(endpoints.split(','), config)
    }

    /// This client marks its requests as forwarded by a PD member (see
    /// [`FORWARDED_HEADER`]). For PD members only.
    pub fn forwarding(mut self) -> Self {
        self.forwarded = true;
        self
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.to_string()).collect()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Registers a node; returns its id and the cluster id.
    pub async fn register_node(&self, req: &RegisterNode) -> Result<(NodeId, u64), ApiError> {
        let req = pb::RegisterNodeRequest::from(req);
        let resp = self.call("RegisterNode", req, |mut pd, r| async move { pd.register_node(r).await }).await?;
        Ok((NodeId(resp.node_id), resp.cluster_id))
    }

    /// Sends a node heartbeat; returns the PD's commands for the node, when it
    /// expects the next heartbeat and whether it wants a full report.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAnswer, ApiError> {
        let req = pb::HeartbeatRequest::from(hb);
        let resp = self.call("Heartbeat", req, |mut pd, r| async move { pd.heartbeat(r).await }).await?;
        HeartbeatAnswer::try_from(resp).map_err(|e| ApiError::Internal(format!("malformed heartbeat response: {e}")))
    }

    /// The shard holding `key` and the map revision of the answer.
    pub async fn locate(&self, key: &[u8]) -> Result<(ShardRoute, u64), ApiError> {
        let req = pb::LocateRequest { key: key.to_vec() };
        let resp = self.call("Locate", req, |mut pd, r| async move { pd.locate(r).await }).await?;
        let route = resp.route.ok_or_else(|| ApiError::Internal("Locate answered without a route".into()))?;
        let route = ShardRoute::try_from(route).map_err(|e| ApiError::Internal(format!("malformed route: {e}")))?;
        Ok((route, resp.revision))
    }

    /// The shards overlapping `range` in key order (at most `limit`, 0 = all) and
    /// the map revision of the answer.
    pub async fn list_shards(&self, range: &KeyRange, limit: u32) -> Result<(Vec<ShardRoute>, u64), ApiError> {
        let req = pb::PdListShardsRequest { start: range.start.clone(), end: range.end.clone(), limit };
        let resp = self.call("ListShards", req, |mut pd, r| async move { pd.list_shards(r).await }).await?;
        let shards = resp.shards.into_iter().map(ShardRoute::try_from).collect::<Result<Vec<_>, _>>();
        let shards = shards.map_err(|e| ApiError::Internal(format!("malformed shard list: {e}")))?;
        Ok((shards, resp.revision))
    }

    /// The cluster as the PD leader sees it, with up to `events` recent events.
    pub async fn cluster(&self, events: u32) -> Result<ClusterStatus, ApiError> {
        let req = pb::GetClusterRequest { events };
        let resp = self.call("GetCluster", req, |mut pd, r| async move { pd.get_cluster(r).await }).await?;
        ClusterStatus::try_from(resp).map_err(|e| ApiError::Internal(format!("malformed cluster status: {e}")))
    }

    /// Changes one cluster setting (a name of [`cairn_proto::SETTING_NAMES`]; the PD
    /// parses the value); returns every setting after the change. Checked here
    /// before anything is sent.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<ClusterSettings, ApiError> {
        let change = SettingChange { name: name.to_string(), value: value.to_string() };
        change.validate()?;
        let req = pb::SetSettingRequest::from(&change);
        let resp = self.call("SetSetting", req, |mut pd, r| async move { pd.set_setting(r).await }).await?;
        let settings =
            resp.settings.ok_or_else(|| ApiError::Internal("SetSetting answered without settings".into()))?;
        Ok(settings.into())
    }

    /// Starts an operator on `shard` (not shard 0, the PD's own). Like every call
    /// it is retried on another member after a timeout, so a retry of an operator
    /// the PD did create can be refused because the shard already has one: check
    /// [`PdClient::list_operators`].
    pub async fn create_operator(&self, shard: ShardId, kind: OperatorKind) -> Result<OperatorInfo, ApiError> {
        let request = OperatorRequest { shard, kind };
        request.validate()?;
        let req = pb::CreateOperatorRequest::from(&request);
        let resp = self.call("CreateOperator", req, |mut pd, r| async move { pd.create_operator(r).await }).await?;
        let operator =
            resp.operator.ok_or_else(|| ApiError::Internal("CreateOperator answered without an operator".into()))?;
        OperatorInfo::try_from(operator).map_err(|e| ApiError::Internal(format!("malformed operator: {e}")))
    }

    /// The operators in flight.
    pub async fn list_operators(&self) -> Result<Vec<OperatorInfo>, ApiError> {
        let req = pb::ListOperatorsRequest {};
        let resp = self.call("ListOperators", req, |mut pd, r| async move { pd.list_operators(r).await }).await?;
        let operators = resp.operators.into_iter().map(OperatorInfo::try_from).collect::<Result<Vec<_>, _>>();
        operators.map_err(|e| ApiError::Internal(format!("malformed operator list: {e}")))
    }

    /// Drains, re-activates or removes `node`; returns the node as the PD now sees it.
    pub async fn set_node_state(&self, node: NodeId, state: AdminRequest) -> Result<NodeInfo, ApiError> {
        let change = NodeStateChange { node, state };
        change.validate()?;
        let req = pb::SetNodeStateRequest::from(&change);
        let resp = self.call("SetNodeState", req, |mut pd, r| async move { pd.set_node_state(r).await }).await?;
        let info = resp.node.ok_or_else(|| ApiError::Internal("SetNodeState answered without a node".into()))?;
        NodeInfo::try_from(info).map_err(|e| ApiError::Internal(format!("malformed node info: {e}")))
    }

    /// How far the cluster is from balanced.
    pub async fn rebalance_status(&self) -> Result<RebalanceStatus, ApiError> {
        let req = pb::RebalanceStatusRequest {};
        let resp = self.call("RebalanceStatus", req, |mut pd, r| async move { pd.rebalance_status(r).await }).await?;
        RebalanceStatus::try_from(resp).map_err(|e| ApiError::Internal(format!("malformed rebalance status: {e}")))
    }

    /// Subscribes to shard-map changes after `from_revision` (0 = start with the
    /// whole map). Opening the stream fails over like any call; the stream
    /// itself does not.
    pub async fn watch_shards(&self, from_revision: u64) -> Result<ShardMapStream, ApiError> {
        let req = pb::WatchShardsRequest { from_revision };
        let stream = self
            .call_with_timeout("WatchShards", req, None, |mut pd, r| async move { pd.watch_shards(r).await })
            .await?;
        let mapped = stream.map(|item| match item {
            Ok(event) => ShardMapEvent::try_from(event)
                .map_err(|e| ApiError::Internal(format!("malformed shard-map event: {e}"))),
            Err(status) => Err(ApiError::from_status(&status)),
        });
        Ok(Box::pin(mapped))
    }

    async fn call<Req, Resp, F, Fut>(&self, method: &'static str, req: Req, rpc: F) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(PdGrpc<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_with_timeout(method, req, Some(self.config.request_timeout), rpc).await
    }

    /// Tries the members in turn, starting with the preferred one, until one
    /// answers or the attempts or the operation deadline run out. `timeout` of
    /// `None` bounds only the wait for the response headers (for streams).
    async fn call_with_timeout<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        req: Req,
        timeout: Option<Duration>,
        rpc: F,
    ) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(PdGrpc<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut last_error = None;
        for attempt in 0..self.config.max_attempts {
            let remaining = self.config.operation_timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                break;
            }
            let index = self.preferred.load(Ordering::Relaxed) % self.members.len();
            let member = &self.members[index];
            let per_call = timeout.unwrap_or(self.config.request_timeout).min(remaining);
            let mut request = tonic::Request::new(req.clone());
            if timeout.is_some() {
                request.set_timeout(per_call);
            }
            if self.forwarded {
                request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
            }
            let err: ApiError = match tokio::time::timeout(per_call, rpc(member.grpc.clone(), request)).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => match ApiError::from_status(&status) {
                    ApiError::Unavailable(m) if status.details().is_empty() => {
                        ApiError::Unavailable(format!("PD member {}: {m}", member.addr))
                    }
                    e => e,
                },
                Err(_) => ApiError::DeadlineExceeded(format!(
                    "{method} to PD member {} took longer than {per_call:?}",
                    member.addr
                )),
            };
            match &err {
                ApiError::NotLeader { leader, .. } => {
                    // A member that cannot forward (no leader known, or it is the
                    // stale leader): go to the hinted member if we know it.
                    let hinted = leader
                        .as_ref()
                        .and_then(|(_, addr)| self.members.iter().position(|m| &*m.addr == addr.as_str()));
                    self.preferred.store(hinted.unwrap_or(index + 1), Ordering::Relaxed);
                }
                ApiError::Unavailable(_) | ApiError::DeadlineExceeded(_) => {
                    self.preferred.store(index + 1, Ordering::Relaxed);
                }
                _ => return Err(err),
            }
            tracing::debug!(method, attempt, error = %err, "PD call failed; trying the next member");
            last_error = Some(err);
            // A full round over the members without success: back off before the next.
            if (attempt as usize + 1).is_multiple_of(self.members.len()) {
                let delay = backoff_delay(
                    attempt / self.members.len() as u32,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                    &mut cairn_proto::sim::rng(),
                );
                tokio::time::sleep(delay.min(self.config.operation_timeout.saturating_sub(started.elapsed()))).await;
            }
        }
        Err(last_error
            .unwrap_or_else(|| ApiError::DeadlineExceeded(format!("{method}: no PD member answered in time"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn empty_or_bad_endpoint_lists_are_rejected() {
        assert!(matches!(PdClient::from_list("", ClientConfig::default()), Err(ApiError::InvalidArgument(_))));
        assert!(matches!(
            PdClient::from_list("bad addr\n", ClientConfig::default()),
            Err(ApiError::InvalidArgument(_))
        ));
        let c = PdClient::from_list("127.0.0.1:1, 127.0.0.1:2", ClientConfig::default()).unwrap();
        assert_eq!(c.endpoints(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
    }

    #[tokio::test]
    async fn malformed_admin_requests_fail_before_anything_is_sent() {
        // Nothing listens there: an answer other than INVALID_ARGUMENT means a request went out.
        let config = ClientConfig { max_attempts: 1, ..Default::default() };
        let c = PdClient::from_list("127.0.0.1:1", config).unwrap();
        let invalid = |r: Result<(), ApiError>| matches!(r, Err(ApiError::InvalidArgument(_)));
        assert!(invalid(c.set_setting("no-such-setting", "1").await.map(|_| ())));
        assert!(invalid(c.set_setting("max-operators", &"1".repeat(257)).await.map(|_| ())));
        let to_node_0 = OperatorKind::TransferLeader { to: NodeId(0) };
        assert!(invalid(c.create_operator(ShardId(3), to_node_0).await.map(|_| ())), "node 0");
        let to_itself = OperatorKind::MoveReplica { from: NodeId(2), to: NodeId(2) };
        assert!(invalid(c.create_operator(ShardId(3), to_itself).await.map(|_| ())));
        assert!(invalid(c.set_node_state(NodeId(0), AdminRequest::Draining).await.map(|_| ())));
        let sent = c.set_setting("max-operators", "4").await.unwrap_err();
        assert!(matches!(sent, ApiError::Unavailable(_) | ApiError::DeadlineExceeded(_)), "{sent:?}");
    }

    #[tokio::test]
    async fn unreachable_members_fail_over_then_give_up() {
        let config = ClientConfig {
            max_attempts: 4,
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(5),
            ..Default::default()
        };
        let c = PdClient::from_list("127.0.0.1:1,127.0.0.1:2", config).unwrap();
        let err = c.locate(b"k").await.unwrap_err();
        assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
    }
}
