//! JSON access log: one line per request, written by a dedicated thread so a slow disk or a
//! blocked stdout never stalls a serving thread. When the writer falls behind by more than
//! `QUEUE_LINES` lines, new lines are dropped and counted rather than queued without bound.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;
use tracing::warn;

/// Lines buffered between the serving threads and the writer.
const QUEUE_LINES: usize = 65_536;

/// One access log line.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// RFC 3339 time the request started.
    pub time: String,
    /// Client IP.
    pub client: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Host asked for.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Route label ("" when no route matched).
    pub route: &'a str,
    /// Status sent.
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Start to end of the response, milliseconds.
    pub duration_ms: f64,
    /// Time waiting in the queue, milliseconds.
    pub queue_wait_ms: f64,
    /// Worker that served it ("" if none).
    pub worker: &'a str,
    /// Retries on other workers.
    pub retries: u32,
    /// Where the request failed (a `weir_request_errors_total` stage), "" if it did not;
    /// set also when the status was already sent (a response that broke off).
    pub error: &'a str,
}

/// The access log sink.
pub struct AccessLog {
    target: String,
    tx: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Open `target`: "-" or "stdout" for standard output, else a file appended to.
    pub fn open(target: &str) -> std::io::Result<Arc<Self>> {
        let out: Box<dyn Write + Send> = match target {
            "-" | "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Arc::new(AccessLog {
            target: target.to_string(),
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Where it writes.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Queue one entry; never blocks.
    pub fn write(&self, entry: &AccessEntry<'_>) {
        // One allocation per line, sized for a typical entry.
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) % 10_000 == 0 {
                    warn!(target = %self.target, "access log writer is behind; dropping lines");
                }
            }
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        // Write what is queued, then flush once the queue is empty.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
}
