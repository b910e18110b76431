//! The request body sent to a worker, and the client's body it streams from.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::spool::Spool;

use crate::error::ClientBodyError;
use crate::http1::RequestBody;

/// A client's request body, from whichever server read it: hyper (HTTP/2) or weir's own
/// HTTP/1.1 path. One type, so the request path is the same for both.
pub enum ClientBody {
    /// An HTTP/2 stream's body, read by hyper.
    Http2(Incoming),
    /// An HTTP/1.x body, fed by weir's own driver from the connection's read buffer.
    Http1(RequestBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(ClientBodyError::Http2),
            ClientBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(ClientBodyError::Http1),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http2(body) => body.is_end_stream(),
            ClientBody::Http1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http2(body) => body.size_hint(),
            ClientBody::Http1(body) => body.size_hint(),
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
    /// Read ahead of the worker into memory and a temporary file (boxed: it is the rarer,
    /// larger case).
    Buffered(Box<BufferedBody>),
}

/// A request body weir read before the request took a worker slot: what the spool holds, then
/// the trailers, then (when the body outgrew the spool) the piece that did not fit and the
/// rest of the client's body as it comes.
pub struct BufferedBody {
    spool: Spool,
    overflow: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<ClientBody>,
    /// Counts the rest's bytes as they stream (for the access log).
    counter: Option<Arc<AtomicU64>>,
    hint: SizeHint,
}

impl BufferedBody {
    /// A body read whole: `len` bytes in `spool`, then `trailers`.
    pub fn whole(spool: Spool, len: u64, trailers: Option<HeaderMap>) -> Self {
        // With trailers the body must go chunked, so its length is not announced.
        let hint = if trailers.is_some() {
            SizeHint::default()
        } else {
            SizeHint::with_exact(len)
        };
        BufferedBody {
            spool,
            overflow: None,
            trailers,
            rest: None,
            counter: None,
            hint,
        }
    }

    /// A body that outgrew `spool`: what it holds, then `overflow`, then `rest` (its bytes
    /// added to `counter` as they stream), whose size hint still tells what is left (`read`
    /// bytes were taken from it already).
    pub fn partial(
        spool: Spool,
        overflow: Bytes,
        rest: ClientBody,
        counter: Option<Arc<AtomicU64>>,
        read: u64,
    ) -> Self {
        let left = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(left.lower().saturating_add(read));
        if let Some(upper) = left.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        BufferedBody {
            spool,
            overflow: Some(overflow),
            trailers: None,
            rest: Some(rest),
            counter,
            hint,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.spool.pop() {
            Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Some(Err(ClientBodyError::Spool(e)))),
        }
        if let Some(data) = self.overflow.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = self.rest.as_mut() {
            let polled = Pin::new(rest).poll_frame(cx);
            if let (Poll::Ready(Some(Ok(frame))), Some(counter)) = (&polled, &self.counter) {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            return polled;
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.spool.is_empty()
            && self.overflow.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }
}

impl UpstreamBody {
    /// No body.
    pub fn empty() -> Self {
        UpstreamBody::Bytes(None)
    }

    /// A copy for a replay, when the body is held in memory.
    pub fn replay_copy(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Stream(_) | UpstreamBody::Counted(..) | UpstreamBody::Buffered(_) => None,
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
            UpstreamBody::Buffered(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(body) | UpstreamBody::Counted(body, _) => body.is_end_stream(),
            UpstreamBody::Bytes(bytes) => bytes.is_none(),
            UpstreamBody::Buffered(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(body) | UpstreamBody::Counted(body, _) => body.size_hint(),
            UpstreamBody::Bytes(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Bytes(None) => SizeHint::with_exact(0),
            UpstreamBody::Buffered(body) => body.hint,
        }
    }
}
