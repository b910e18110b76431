//! The request body sent to a worker.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client's body streamed through, or bytes weir holds (empty, or buffered so the request
/// can be sent again).
pub enum UpstreamBody {
    /// Streamed from the client as it arrives.
    Stream(Incoming),
    /// Streamed, with the bytes counted (for the access log).
    Counted(Incoming, Arc<AtomicU64>),
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
