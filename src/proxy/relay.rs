//! HTTP/2 responses that still hold a worker are relayed by a small task of their own, so one
//! stream the client gives no window can be cut on its own after `server.send_timeout`: hyper
//! does not poll a body it has no window for, so only a task outside it can notice the stall.
//! The task drops the worker side (its slot frees, the connection to the worker closes, the
//! request is recorded with the `client` stage) and the stream is reset when hyper next polls
//! it. Responses weir holds whole (`upstream.response_buffer`) and HTTP/1.1 ones are not
//! relayed: they hold no worker, or the connection's own watchdog covers them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tracing::warn;

use super::body::ProxyBody;
use super::conn::ConnContext;
use crate::error::ProxyError;

/// Frames the relay may read ahead of the client: enough to keep the stream busy, little
/// enough that a stalled stream holds a frame or two.
const READ_AHEAD_FRAMES: usize = 2;

/// The client side of a relayed response.
pub struct Relayed {
    frames: mpsc::Receiver<Frame<Bytes>>,
    /// Set by the relay when the worker's body ended cleanly; a closed channel without it is
    /// a cut response, and hyper must reset the stream rather than end it.
    ended: Arc<AtomicBool>,
    hint: SizeHint,
    /// Told each time the client takes a frame, for the connection's watchdog.
    cx: Arc<ConnContext>,
    /// Frames handed to hyper so far. hyper takes a stream's first frame before it knows
    /// whether the client gives the stream any window, so only the later ones show the client
    /// reading.
    handed: u64,
}

/// Relay `body` through a task that gives up when the client takes nothing for
/// `send_timeout`.
pub fn relay(body: ProxyBody, cx: Arc<ConnContext>, send_timeout: Duration) -> Relayed {
    let (tx, frames) = mpsc::channel(READ_AHEAD_FRAMES);
    let ended = Arc::new(AtomicBool::new(false));
    let hint = body.size_hint();
    tokio::spawn(pump(
        body,
        tx,
        Arc::clone(&ended),
        Arc::clone(&cx),
        send_timeout,
    ));
    Relayed {
        frames,
        ended,
        hint,
        cx,
        handed: 0,
    }
}

async fn pump(
    mut body: ProxyBody,
    tx: mpsc::Sender<Frame<Bytes>>,
    ended: Arc<AtomicBool>,
    cx: Arc<ConnContext>,
    send_timeout: Duration,
) {
    loop {
        let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => frame,
            None => {
                ended.store(true, Ordering::Release);
                return;
            }
            // The body has recorded and logged its failure; the stream is reset.
            Some(Err(_)) => return,
        };
        match tokio::time::timeout(send_timeout, tx.reserve()).await {
            Ok(Ok(permit)) => permit.send(frame),
            // hyper let go of the stream (the client reset it): dropping the body records that.
            Ok(Err(_)) => return,
            Err(_) => {
                warn!(client = %cx.peer, timeout = ?send_timeout, "HTTP/2 stream took no response bytes within send_timeout; resetting it and freeing its worker");
                cx.stream_cut();
                return;
            }
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                self.handed += 1;
                if self.handed > 1 {
                    self.cx.body_polled();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if self.ended.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(ProxyError::client_not_reading()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
