//! The gRPC edge of the node: the only place generated protobuf types appear.
//! Each service converts requests to domain types, calls the node, and maps
//! errors with `ApiError::to_status`.

pub mod admin;
mod killable;
pub mod kv;
pub mod metrics;
pub mod pd;
pub mod raft;

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::net::Connection;

use cairn_proto::pb::admin_server::AdminServer;
use cairn_proto::pb::kv_server::KvServer;
use cairn_proto::pb::pd_server::PdServer;
use cairn_proto::pb::raft_server::RaftServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::config::NodeConfig;
use crate::node::NodeShared;

/// Accepted connections, from a TCP listener ([`tcp_incoming`]) or a
/// simulated network.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>>;

/// The connections `listener` accepts, with TCP_NODELAY set (TcpIncoming sets
/// it on accepted sockets; the server builder's own option applies only to
/// listeners tonic binds itself).
pub fn tcp_incoming(listener: TcpListener) -> Incoming {
    Box::pin(TcpIncoming::from(listener).with_nodelay(Some(true)).map(|conn| conn.map(|s| Box::new(s) as Connection)))
}

/// Serves KV, Raft, Admin and Pd on the `incoming` connections until `cancel`
/// (graceful: open requests finish); `kill` cuts every open connection at once.
pub fn serve(
    node: Arc<NodeShared>,
    incoming: Incoming,
    config: &NodeConfig,
    cancel: CancellationToken,
    kill: CancellationToken,
) -> JoinHandle<()> {
    // Client messages may exceed the request limit by framing overhead; anything
    // larger than twice the limit is refused by tonic before it is decoded.
    let client_bytes_max = config.limits.request_bytes_max * 2;
    let scan_bytes_max = config.transport.message_bytes_max;
    let kv = KvServer::new(kv::KvService { node: node.clone() })
        .max_decoding_message_size(client_bytes_max)
        .max_encoding_message_size(scan_bytes_max);
    let raft = RaftServer::new(raft::RaftService { node: node.clone() })
        .max_decoding_message_size(config.transport.message_bytes_max)
        .max_encoding_message_size(config.transport.message_bytes_max);
    let admin = AdminServer::new(admin::AdminService { node: node.clone(), fault_injection: config.fault_injection });
    let pd = PdServer::new(pd::PdService::new(node.clone()))
        .max_decoding_message_size(config.transport.message_bytes_max)
        .max_encoding_message_size(config.transport.message_bytes_max);
    let incoming = incoming.map(move |conn| conn.map(|stream| killable::Killable::new(stream, kill.clone())));
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .add_service(kv)
            .add_service(raft)
            .add_service(admin)
            .add_service(pd)
            .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}
