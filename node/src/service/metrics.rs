//! The Prometheus endpoint: `GET /metrics` in the text exposition format.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::NodeShared;

pub async fn serve(
    node: Arc<NodeShared>,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let node = node.clone();
            async move {
                (
                    [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    crate::metrics::render(
                        &node.storage.stats(),
                        node.registry.len(),
                        node.registry.all().iter().filter(|r| r.group.is_quiescent()).count(),
                    ),
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    }))
}
