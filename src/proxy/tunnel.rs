//! Byte tunnels for upgraded connections (WebSocket and other `Upgrade` protocols).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::conn::ActivityGuard;
use crate::http1::{PendingUpgrade, Upgraded};
use crate::pool::InFlightGuard;
use crate::upstream::WorkerStream;

/// Once the client side has switched protocols, pass on any bytes the worker sent right after
/// its 101 (`early`) and any the client sent right after its request (read with its head),
/// then copy bytes both ways until either side closes, or until no byte has
/// gone either way for `idle_timeout` (`server.tunnel_idle_timeout`). The request stays in
/// flight on its worker for the tunnel's whole life.
pub fn spawn(
    client: PendingUpgrade,
    mut worker: WorkerStream,
    early: Bytes,
    in_flight: InFlightGuard,
    activity: ActivityGuard,
    idle_timeout: Duration,
) {
    tokio::spawn(async move {
        let Some(Upgraded { io, read_ahead }) = client.wait().await else {
            debug!("upgrade did not complete: the client connection ended first");
            return;
        };
        if !read_ahead.is_empty() {
            if let Err(e) = worker.write_all(&read_ahead).await {
                debug!(error = %e, "tunnel broke before it started");
                return;
            }
        }
        let moved = Arc::new(AtomicU64::new(0));
        let mut client = Watched {
            inner: io,
            moved: Arc::clone(&moved),
        };
        if !early.is_empty() {
            if let Err(e) = client.write_all(&early).await {
                debug!(error = %e, "tunnel broke before it started");
                return;
            }
        }
        let worker_name = &in_flight.worker().name;
        let copy = tokio::io::copy_bidirectional(&mut client, &mut worker);
        tokio::pin!(copy);
        // Idle check in quarter steps: one timer per tunnel, not per read.
        let tick = (idle_timeout / 4).max(Duration::from_millis(1));
        let (mut seen, mut quiet_ticks) = (0, 0u32);
        loop {
            tokio::select! {
                copied = &mut copy => {
                    match copied {
                        Ok((up, down)) => debug!(worker = %worker_name, up, down, "tunnel closed"),
                        Err(e) => debug!(worker = %worker_name, error = %e, "tunnel broke"),
                    }
                    break;
                }
                _ = tokio::time::sleep(tick) => {
                    let now = moved.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, quiet_ticks) = (now, 0);
                        continue;
                    }
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 {
                        debug!(worker = %worker_name, idle = ?idle_timeout, "tunnel idle; closing it");
                        break;
                    }
                }
            }
        }
        drop(activity);
        drop(in_flight);
    });
}

/// The client side of a tunnel, counting the bytes that pass either way, so the idle check
/// sees traffic in both directions.
struct Watched<S> {
    inner: S,
    moved: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
