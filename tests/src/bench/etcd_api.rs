//! The few calls of etcd's v3 gRPC API that `move-bench` makes of its measured
//! peer (Debian's `etcd-server`, 3.4): puts and batched puts, membership changes,
//! and a member's status. The messages carry only the fields used here, under
//! etcd's field numbers (protobuf skips the fields a side does not know), so no
//! `.proto` file or code generation is needed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The longest any single etcd call may take (a membership change waits for
/// the cluster to apply it).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// One operation of a transaction: only puts here (`request_put`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(message, optional, tag = "2")]
    pub request_put: Option<PutRequest>,
}

/// A transaction with no comparisons: its `success` operations always apply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Member {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAddRequest {
    #[prost(string, repeated, tag = "1")]
    pub peer_urls: Vec<String>,
    #[prost(bool, tag = "2")]
    pub is_learner: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAddResponse {
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
}

/// The request of both `MemberRemove` and `MemberPromote`: a member's id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberIdRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// The response of `MemberRemove`, `MemberPromote` and `MemberList`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembersResponse {
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    #[prost(uint64, tag = "7")]
    pub raft_applied_index: u64,
    #[prost(bool, tag = "10")]
    pub is_learner: bool,
}

/// A connection to one etcd member.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    channel: Channel,
}

impl EtcdClient {
    /// A client of the member serving clients at `addr`; it connects on its first
    /// call (so it can be made while the member is still starting).
    pub fn new(addr: SocketAddr) -> anyhow::Result<EtcdClient> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .with_context(|| format!("etcd at {addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(EtcdClient { channel })
    }

    async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("etcd not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(tonic::Request::new(request), PathAndQuery::from_static(path), codec).await.map(|r| r.into_inner())
    }

    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), tonic::Status> {
        self.unary::<_, PutResponse>("/etcdserverpb.KV/Put", PutRequest { key, value }).await.map(drop)
    }

    /// Puts every pair in one transaction (one Raft entry).
    pub async fn put_all(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), tonic::Status> {
        let success =
            pairs.into_iter().map(|(key, value)| RequestOp { request_put: Some(PutRequest { key, value }) }).collect();
        let r: TxnResponse = self.unary("/etcdserverpb.KV/Txn", TxnRequest { success }).await?;
        if r.succeeded { Ok(()) } else { Err(tonic::Status::internal("etcd txn without comparisons did not succeed")) }
    }

    pub async fn status(&self) -> Result<StatusResponse, tonic::Status> {
        self.unary("/etcdserverpb.Maintenance/Status", Empty {}).await
    }

    pub async fn member_list(&self) -> Result<Vec<Member>, tonic::Status> {
        self.unary::<_, MembersResponse>("/etcdserverpb.Cluster/MemberList", Empty {}).await.map(|r| r.members)
    }

    /// Adds a learner (non-voting) member reachable at `peer_url`; returns its id.
    pub async fn add_learner(&self, peer_url: String) -> Result<u64, tonic::Status> {
        let request = MemberAddRequest { peer_urls: vec![peer_url], is_learner: true };
        let r: MemberAddResponse = self.unary("/etcdserverpb.Cluster/MemberAdd", request).await?;
        r.member.map(|m| m.id).ok_or_else(|| tonic::Status::internal("MemberAdd answered without the member"))
    }

    pub async fn promote(&self, id: u64) -> Result<(), tonic::Status> {
        self.unary::<_, MembersResponse>("/etcdserverpb.Cluster/MemberPromote", MemberIdRequest { id }).await.map(drop)
    }

    pub async fn remove(&self, id: u64) -> Result<(), tonic::Status> {
        self.unary::<_, MembersResponse>("/etcdserverpb.Cluster/MemberRemove", MemberIdRequest { id }).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The encodings etcd expects: a put's key and value are fields 1 and 2, and
    /// a transaction's puts are `success` (2) operations holding `request_put` (2).
    #[test]
    fn messages_use_etcds_field_numbers() {
        let put = PutRequest { key: b"k".to_vec(), value: b"v".to_vec() };
        assert_eq!(put.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'v']);
        let txn = TxnRequest { success: vec![RequestOp { request_put: Some(put) }] };
        assert_eq!(txn.encode_to_vec(), [0x12, 8, 0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
        let add = MemberAddRequest { peer_urls: vec!["u".into()], is_learner: true };
        assert_eq!(add.encode_to_vec(), [0x0a, 1, b'u', 0x10, 1]);
        // A status response with fields this client does not model still decodes.
        let mut bytes = StatusResponse { leader: 7, raft_index: 9, ..Default::default() }.encode_to_vec();
        bytes.extend([0x9a, 0x01, 1, b'x']); // field 19, length-delimited: unknown here
        let decoded = StatusResponse::decode(bytes.as_slice()).expect("decodes");
        assert_eq!((decoded.leader, decoded.raft_index), (7, 9));
    }
}
