//! [`NodeClient`]: a typed wrapper over one node's gRPC endpoint (the `Kv` and `Admin`
//! services).
//!
//! Invariants:
//! - One method call is exactly one RPC. Nothing here routes, retries or caches; that is
//!   the job of [`crate::DirectClient`].
//! - Every call has a deadline: it is sent to the server as `grpc-timeout` and also
//!   enforced locally, so a call never outlives it; expiry is `ApiError::DeadlineExceeded`.
//! - Errors are `ApiError` only: a status with Cairn details decodes to its exact error,
//!   transport failures map to `Unavailable`, and a malformed response to `Internal`.
//! - Generated `pb` types stay inside this module.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::pb::admin_client::AdminClient;
use cairn_proto::pb::kv_client::KvClient;
use cairn_proto::{ApiError, Document, NodeId, NodeStats, Route, Session, ShardStatus, pb};
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;

/// The key range of one scan RPC, which must lie inside the routed shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanRange {
    /// Inclusive start; empty means the start of the shard.
    pub start: Vec<u8>,
    /// Exclusive end; empty means the end of the shard.
    pub end: Vec<u8>,
    /// When set, the server scans the keys with this prefix and ignores `start`/`end`.
    pub prefix: Option<Vec<u8>>,
}

/// A typed client of one Cairn node. Cheap to clone: clones share one HTTP/2 connection.
///
/// The connection is made lazily on the first call, so creating a `NodeClient` never
/// blocks; it must be created inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct NodeClient {
    addr: Arc<str>,
    kv: KvClient<Channel>,
    admin: AdminClient<Channel>,
    request_timeout: Duration,
}

impl NodeClient {
    /// A client of the node at `addr` (`host:port`, or a full `http://host:port` URI),
    /// using `connect_timeout`, `request_timeout` and `message_bytes_max` from `config`.
    /// Fails with `InvalidArgument` if `addr` is not a valid address.
    pub fn new(addr: &str, config: &ClientConfig) -> Result<Self, ApiError> {
        let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ApiError::InvalidArgument(format!("bad node address {addr:?}: {e}")))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        let channel = config.net.channel(&endpoint);
        let kv = KvClient::new(channel.clone())
            .max_decoding_message_size(config.message_bytes_max)
            .max_encoding_message_size(config.message_bytes_max);
        let admin = AdminClient::new(channel)
            .max_decoding_message_size(config.message_bytes_max)
            .max_encoding_message_size(config.message_bytes_max);
        Ok(Self { addr: addr.into(), kv, admin, request_timeout: config.request_timeout })
    }

    /// The address this client was created with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The deadline of each call.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The same client (sharing the connection) with another per-call deadline.
    pub fn with_request_timeout(&self, timeout: Duration) -> NodeClient {
        NodeClient { request_timeout: timeout, ..self.clone() }
    }

    /// `Admin.ListShards`: the node's id and every replica it hosts.
    pub async fn list_shards(&self) -> Result<(NodeId, Vec<ShardStatus>), ApiError> {
        let mut admin = self.admin.clone();
        let resp =
            self.call("ListShards", pb::ListShardsRequest {}, |r| async move { admin.list_shards(r).await }).await?;
        let shards = resp.shards.into_iter().map(ShardStatus::try_from).collect::<Result<Vec<_>, _>>();
        let shards = shards.map_err(|e| self.malformed("ListShards", e))?;
        Ok((NodeId(resp.node_id), shards))
    }

    /// `Admin.NodeStats`: the node's counters.
    pub async fn node_stats(&self) -> Result<NodeStats, ApiError> {
        let mut admin = self.admin.clone();
        let resp =
            self.call("NodeStats", pb::NodeStatsRequest {}, |r| async move { admin.node_stats(r).await }).await?;
        Ok(resp.into())
    }

    /// `Admin.SetLinkFaults` (chaos testing, nodes started with `fault-injection = true`):
    /// replaces every fault on the links from this node; an empty list heals them.
    pub async fn set_link_faults(&self, links: Vec<pb::LinkFault>, seed: u64) -> Result<(), ApiError> {
        let mut admin = self.admin.clone();
        let req = pb::SetLinkFaultsRequest { links, seed };
        self.call("SetLinkFaults", req, |r| async move { admin.set_link_faults(r).await }).await?;
        Ok(())
    }

    /// `Admin.Nudge` (sent by the PD leader): asks the node to heartbeat now, for
    /// commands the PD has for it. `cluster_id` 0: not checked.
    pub async fn nudge(&self, cluster_id: u64) -> Result<(), ApiError> {
        let mut admin = self.admin.clone();
        let req = pb::NudgeRequest { cluster_id };
        self.call("Nudge", req, |r| async move { admin.nudge(r).await }).await?;
        Ok(())
    }

    /// `Kv.Get`: the document at `key`, or `None` if it does not exist. `stale_ok` allows
    /// any replica to answer without a leader check.
    pub async fn get(&self, route: Route, key: &[u8], stale_ok: bool) -> Result<Option<Document>, ApiError> {
        let req = pb::GetRequest { route: Some(route.into()), key: key.to_vec(), stale_ok };
        let mut kv = self.kv.clone();
        let resp = self.call("Get", req, |r| async move { kv.get(r).await }).await?;
        Ok(resp.document.map(Document::from))
    }

    /// `Kv.Put`: stores the JSON text `value` at `key` and returns the new version.
    /// `expected_version`: `None` writes unconditionally, `Some(0)` requires the key to be
    /// absent, `Some(n)` requires it to be at version `n`.
    pub async fn put(
        &self,
        route: Route,
        session: Session,
        key: &[u8],
        value: &[u8],
        expected_version: Option<u64>,
    ) -> Result<u64, ApiError> {
        let req = pb::PutRequest {
            route: Some(route.into()),
            session: Some(session.into()),
            key: key.to_vec(),
            value: value.to_vec(),
            expected_version,
        };
        let mut kv = self.kv.clone();
        let resp = self.call("Put", req, |r| async move { kv.put(r).await }).await?;
        Ok(resp.version)
    }

    /// `Kv.Delete`: removes `key`; returns whether a document existed and the log index
    /// of the delete. `expected_version` works as in [`NodeClient::put`].
    pub async fn delete(
        &self,
        route: Route,
        session: Session,
        key: &[u8],
        expected_version: Option<u64>,
    ) -> Result<(bool, u64), ApiError> {
        let req = pb::DeleteRequest {
            route: Some(route.into()),
            session: Some(session.into()),
            key: key.to_vec(),
            expected_version,
        };
        let mut kv = self.kv.clone();
        let resp = self.call("Delete", req, |r| async move { kv.delete(r).await }).await?;
        Ok((resp.deleted, resp.version))
    }

    /// `Kv.Scan`: up to `limit` documents of `range` within the routed shard, in key order.
    /// The second value is set when the limit cut the scan short: continue from that key
    /// (inclusive) within the same shard.
    pub async fn scan(
        &self,
        route: Route,
        range: ScanRange,
        limit: u32,
        stale_ok: bool,
        keys_only: bool,
    ) -> Result<(Vec<Document>, Option<Vec<u8>>), ApiError> {
        let req = pb::ScanRequest {
            route: Some(route.into()),
            start: range.start,
            end: range.end,
            prefix: range.prefix,
            limit,
            stale_ok,
            keys_only,
        };
        let mut kv = self.kv.clone();
        let resp = self.call("Scan", req, |r| async move { kv.scan(r).await }).await?;
        Ok((resp.documents.into_iter().map(Document::from).collect(), resp.continue_from))
    }

    /// `Kv.BatchGet`: one entry per key of `keys`, in order; `None` where absent. All keys
    /// must lie in the routed shard.
    pub async fn batch_get(
        &self,
        route: Route,
        keys: Vec<Vec<u8>>,
        stale_ok: bool,
    ) -> Result<Vec<Option<Document>>, ApiError> {
        let asked = keys.len();
        let req = pb::BatchGetRequest { route: Some(route.into()), keys, stale_ok };
        let mut kv = self.kv.clone();
        let resp = self.call("BatchGet", req, |r| async move { kv.batch_get(r).await }).await?;
        if resp.items.len() != asked {
            return Err(self.malformed("BatchGet", format!("{} items for {asked} keys", resp.items.len())));
        }
        resp.items
            .into_iter()
            .map(|item| match (item.found, item.document) {
                (true, Some(d)) => Ok(Some(Document::from(d))),
                (true, None) => Err(self.malformed("BatchGet", "an item is found but has no document")),
                (false, _) => Ok(None),
            })
            .collect()
    }

    /// `Kv.BatchPut`: writes every `(key, value)` pair atomically and returns the log index
    /// that wrote them. All keys must lie in the routed shard.
    pub async fn batch_put(
        &self,
        route: Route,
        session: Session,
        items: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<u64, ApiError> {
        let req = pb::BatchPutRequest {
            route: Some(route.into()),
            session: Some(session.into()),
            items: items.into_iter().map(|(key, value)| pb::BatchPutItem { key, value }).collect(),
        };
        let mut kv = self.kv.clone();
        let resp = self.call("BatchPut", req, |r| async move { kv.batch_put(r).await }).await?;
        Ok(resp.version)
    }

    /// Runs one RPC under this client's deadline and maps its failure to an `ApiError`.
    async fn call<Req, Resp, F, Fut>(&self, method: &'static str, req: Req, rpc: F) -> Result<Resp, ApiError>
    where
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(req);
        // Tells the server when to give up, and makes tonic's channel enforce it too.
        request.set_timeout(self.request_timeout);
        // The local timer also bounds the wait for a lazy connection and is the one
        // guarantee that does not depend on the transport's internals.
        match tokio::time::timeout(self.request_timeout, rpc(request)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(self.status_error(&status)),
            Err(_elapsed) => Err(ApiError::DeadlineExceeded(format!(
                "{method} to {} took longer than {:?}",
                self.addr, self.request_timeout
            ))),
        }
    }

    /// Decodes a failed call. A status without Cairn details that says "unavailable" comes
    /// from the transport, whose message alone ("tcp connect error") hides the cause; the
    /// address and the error chain are added so that a person can act on it.
    fn status_error(&self, status: &tonic::Status) -> ApiError {
        match ApiError::from_status(status) {
            ApiError::Unavailable(_) if status.details().is_empty() && status.code() == tonic::Code::Unavailable => {
                let mut cause = status.message().to_string();
                let mut source = std::error::Error::source(status);
                while let Some(err) = source {
                    let text = err.to_string();
                    if !cause.contains(&text) {
                        cause = format!("{cause}: {text}");
                    }
                    source = err.source();
                }
                ApiError::Unavailable(format!("node {}: {cause}", self.addr))
            }
            err => err,
        }
    }

    fn malformed(&self, method: &str, what: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(format!("malformed {method} response from {}: {what}", self.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::ShardId;

    #[tokio::test]
    async fn bad_address_is_invalid_argument() {
        let err = NodeClient::new("not a uri\n", &ClientConfig::default()).unwrap_err();
        assert!(matches!(err, ApiError::InvalidArgument(_)), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_node_is_unavailable_or_deadline() {
        // Port 1 on localhost is closed on any sane machine: the connection is refused.
        let config = ClientConfig { request_timeout: Duration::from_secs(5), ..Default::default() };
        let client = NodeClient::new("127.0.0.1:1", &config).expect("valid address");
        let route = Route { shard: ShardId(1), epoch: Default::default() };
        let err = client.get(route, b"k", false).await.unwrap_err();
        let ApiError::Unavailable(message) = &err else { panic!("{err:?}") };
        assert!(message.starts_with("node 127.0.0.1:1: "), "{message}");
        assert!(err.is_retryable());
    }
}
