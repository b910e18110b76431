//! The hand-off of a connection that switched protocols: the client's stream as the HTTP/1.1
//! driver holds it, the connection once its 101 is written, and the bytes read past the
//! request head. The driver makes it; the proxy's tunnel takes it.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A client connection as the driver needs it: bytes both ways, and movable to a tunnel task
/// after a 101.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready once a read would find bytes (or the end). A connection waiting for its next
    /// request asks this before it takes a read buffer, so an idle one holds none; a stream
    /// that cannot tell says ready at once and the buffer is taken and given back around the
    /// read instead.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Io for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl Io for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

impl Io for tokio::io::DuplexStream {}

/// A connection that switched protocols: the stream, and the bytes the client sent after its
/// request head that weir had already read (the first frames of the new protocol).
pub struct Upgraded {
    /// The client's stream.
    pub io: Box<dyn Io>,
    /// Read past the request head; they go to the worker first.
    pub read_ahead: Bytes,
}

/// In an upgrade request's extensions: the connection once its 101 has been written. Shared
/// (extensions must be `Clone`); the first to wait takes it.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// The upgrade `receiver` will hand over.
    pub fn new(receiver: oneshot::Receiver<Upgraded>) -> Self {
        PendingUpgrade(Arc::new(Mutex::new(Some(receiver))))
    }

    /// The upgraded connection, or `None` if the response was no 101 or the connection ended
    /// first.
    pub async fn wait(self) -> Option<Upgraded> {
        let receiver = self.0.lock().ok()?.take()?;
        receiver.await.ok()
    }
}
