//! The byte stream to a worker: plain TCP, or TLS over it (`[pools.NAME] tls`). One type, so
//! weir's HTTP/1.1 client, hyper's HTTP/2 client and upgrade tunnels run over either.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected worker stream.
pub enum WorkerStream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS, handshake done (boxed: the session state is large, plain connections are many).
    Tls(Box<TlsStream<TcpStream>>),
}

impl WorkerStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            WorkerStream::Plain(tcp) => tcp,
            WorkerStream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the protocol agreed by ALPN is HTTP/2.
    pub fn alpn_is_h2(&self) -> bool {
        match self {
            WorkerStream::Plain(_) => false,
            WorkerStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }

    /// Whether an idle connection can carry another request: nothing has arrived on it since
    /// its last response. tokio's cached readiness answers without a system call in the usual
    /// case; only when the socket has signalled something is it looked at (EOF, an error or
    /// stray bytes all mean the connection is done; on TLS any arrival, a close_notify most
    /// likely, does).
    pub fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => match self {
                WorkerStream::Tls(_) => false,
                WorkerStream::Plain(tcp) => {
                    let mut probe = [0u8; 1];
                    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
        }
    }
}

impl AsyncRead for WorkerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WorkerStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WorkerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WorkerStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WorkerStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WorkerStream::Plain(s) => s.is_write_vectored(),
            WorkerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            WorkerStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WorkerStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
