//! A client's HTTP/1.x request body as the request path sees it: fed by the connection's
//! driver through a small channel as the service reads it, and the ways it can end early.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a request body ended early, as the service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The client closed the connection mid-body.
    Incomplete,
    /// The body's framing was broken (a bad chunk).
    Malformed,
    /// No more of it within the body read timeout.
    Stalled,
}

impl Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::Incomplete => "the client closed the connection mid-body",
            BodyError::Malformed => "malformed chunked body",
            BodyError::Stalled => "request body stalled",
        })
    }
}

impl std::error::Error for BodyError {}

/// A request's body, fed by the connection as the service reads it.
#[derive(Debug)]
pub struct RequestBody {
    chunks: Option<mpsc::Receiver<Result<Frame<Bytes>, BodyError>>>,
    hint: SizeHint,
}

impl RequestBody {
    /// A body fed through `chunks`, whose size is `hint`.
    pub fn new(chunks: mpsc::Receiver<Result<Frame<Bytes>, BodyError>>, hint: SizeHint) -> Self {
        RequestBody {
            chunks: Some(chunks),
            hint,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody {
            chunks: None,
            hint: SizeHint::with_exact(0),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(chunks) = self.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        match chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                self.chunks = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.chunks = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
