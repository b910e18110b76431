//! One HTTP/1.1 connection to a worker: the socket and its read buffer. It is driven by the
//! request that holds it, inside that request's own task, so a proxied request costs no task
//! hand-off, channel or extra wake-up; idle ones wait in the serving thread's pool.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::BytesMut;

use crate::values::lines::SectionScan;
use tokio::io::AsyncReadExt;

use super::stream::WorkerStream;

/// Spare room below which the read buffer is grown before a read.
const MIN_SPARE: usize = 2 * 1024;
/// Read buffer kept by an idle pooled connection; a larger one (grown for a big body) is
/// released so idle connections do not pin memory.
const IDLE_BUFFER_KEEP: usize = 16 * 1024;

/// A connection to a worker.
pub struct WorkerConn {
    pub(super) stream: WorkerStream,
    pub(super) read_buf: BytesMut,
    /// How far the search for the response head's end has gone, so a head that arrives in
    /// many reads is looked at once.
    pub(super) head_scan: SectionScan,
    /// True when it came from the idle pool (and so may have been closed by the worker).
    pub reused: bool,
    /// The [`crate::pool::Transport::id`] it was made with.
    pub transport: u64,
}

impl WorkerConn {
    /// A fresh connection.
    pub fn new(stream: WorkerStream, transport: u64) -> Self {
        WorkerConn {
            stream,
            read_buf: BytesMut::new(),
            head_scan: SectionScan::new(),
            reused: false,
            transport,
        }
    }

    /// Whether an idle connection can carry a request: nothing has arrived on it since its last
    /// response. tokio's cached readiness answers without a system call in the usual case; only
    /// when the socket has signalled something is it read (EOF, an error or stray bytes all
    /// mean the connection is done).
    pub fn is_usable_idle(&self) -> bool {
        self.read_buf.is_empty() && self.stream.is_quiet()
    }

    /// Let go of a read buffer grown for a large body, before idling in the pool.
    pub fn shrink_for_idle(&mut self) {
        if self.read_buf.capacity() > IDLE_BUFFER_KEEP {
            self.read_buf = BytesMut::new();
        }
    }

    /// Read more bytes into the read buffer, with room for at least `want` of them.
    /// `Ready(Ok(0))` is end of stream.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<std::io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_SPARE.min(want) {
            self.read_buf.reserve(want);
        }
        let read = pin!(self.stream.read_buf(&mut self.read_buf));
        read.poll(cx)
    }

    /// The socket and unread bytes, for a connection that switched protocols.
    pub fn into_parts(self) -> (WorkerStream, BytesMut) {
        (self.stream, self.read_buf)
    }
}
