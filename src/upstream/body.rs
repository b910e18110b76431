//! The request body sent to a worker, and the client's body it streams from.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::server::h1::conn::{BodyError, RequestBody};

/// A client's request body, from whichever server read it: hyper (HTTP/2) or weir's own
/// HTTP/1.1 path. One type, so the request path is the same for both.
pub enum ClientBody {
    /// An HTTP/2 stream's body, read by hyper.
    Hyper(Incoming),
    /// An HTTP/1.1 body, fed from the connection's read buffer.
    Own(RequestBody),
}

/// Why a client's body broke off.
#[derive(Debug)]
pub enum ClientBodyError {
    /// hyper's reading of an HTTP/2 body.
    Hyper(hyper::Error),
    /// weir's own HTTP/1.1 path.
    Own(BodyError),
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Hyper(e) => e.fmt(f),
            ClientBodyError::Own(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientBodyError {}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(ClientBodyError::Hyper),
            ClientBody::Own(body) => Pin::new(body).poll_frame(cx).map_err(ClientBodyError::Own),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Own(body) => body.size_hint(),
        }
    }
}

/// The client's body streamed through, or bytes weir holds (empty, or buffered so the request
/// can be sent again).
pub enum UpstreamBody {
    /// Streamed from the client as it arrives.
    Stream(ClientBody),
    /// Streamed, with the bytes counted (for the access log).
    Counted(ClientBody, Arc<AtomicU64>),
    /// Held in memory; `None` once sent (or for no body).
    Bytes(Option<Bytes>),
}

impl UpstreamBody {
    /// No body.
    pub fn empty() -> Self {
        UpstreamBody::Bytes(None)
    }

    /// A copy for a replay, when the body is held in memory.
    pub fn replay_copy(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Stream(_) | UpstreamBody::Counted(..) => None,
            UpstreamBody::Bytes(bytes) => Some(UpstreamBody::Bytes(bytes.clone())),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Stream(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Counted(body, counter) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
            UpstreamBody::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(body) | UpstreamBody::Counted(body, _) => body.is_end_stream(),
            UpstreamBody::Bytes(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(body) | UpstreamBody::Counted(body, _) => body.size_hint(),
            UpstreamBody::Bytes(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Bytes(None) => SizeHint::with_exact(0),
        }
    }
}
