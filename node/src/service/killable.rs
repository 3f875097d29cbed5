//! Accepted connections that a node can cut at once: when the kill token
//! fires, every read and write on them fails, so the connection tasks (which
//! the gRPC server spawns and does not stop itself) end and drop the services
//! they hold. Used when a node stops abruptly and after a graceful shutdown
//! that overran its grace period.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_proto::net::Connection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

pub struct Killable {
    inner: Connection,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Killable {
    pub fn new(inner: Connection, kill: CancellationToken) -> Self {
        Self { inner, killed: Box::pin(kill.cancelled_owned()) }
    }

    /// Registers for the kill and reports whether it happened.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the node stopped")),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Killable {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Killable {
    /// No service reads the peer's address (and a simulated connection has
    /// no socket to ask).
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}
