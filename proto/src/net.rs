//! How nodes and clients reach each other.
//!
//! By default every gRPC channel dials real TCP. A [`Net`] built from a
//! [`Dialer`] replaces that: the simulated-network test tier (turmoil) dials
//! through it, so the same node and client code runs over a seeded, simulated
//! network. A runtime choice rather than a cargo feature: features unify across
//! the workspace, and `cargo test` would otherwise build every server with the
//! simulated network.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

/// A byte stream to or from a peer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An open connection.
pub type Connection = Box<dyn Io>;

/// The future of one dial.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<Connection>> + Send>>;

/// Opens connections to `host:port`.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, host: &str, port: u16) -> DialFuture;
}

/// The network channels are opened over: real TCP (the default) or a dialer.
#[derive(Clone, Default)]
pub struct Net {
    dialer: Option<Arc<dyn Dialer>>,
}

impl Net {
    /// Real TCP.
    pub fn tcp() -> Self {
        Self { dialer: None }
    }

    /// Every connection through `dialer`.
    pub fn with_dialer(dialer: Arc<dyn Dialer>) -> Self {
        Self { dialer: Some(dialer) }
    }

    pub fn is_tcp(&self) -> bool {
        self.dialer.is_none()
    }

    /// A channel to `endpoint` that connects on first use (and reconnects
    /// after a failure), over this network.
    pub fn channel(&self, endpoint: &Endpoint) -> Channel {
        let Some(dialer) = self.dialer.clone() else {
            return endpoint.connect_lazy();
        };
        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            let dialer = dialer.clone();
            async move {
                let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
                let port = uri.port_u16().unwrap_or(80);
                dialer.dial(host, port).await.map(TokioIo::new)
            }
        }))
    }
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.dialer.is_some() { "Net::Dialer" } else { "Net::Tcp" })
    }
}

/// Two networks are equal when both are TCP or both use the same dialer.
impl PartialEq for Net {
    fn eq(&self, other: &Self) -> bool {
        match (&self.dialer, &other.dialer) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Net {}
