//! One request/response exchange on a worker connection, driven from the request's own task:
//! write the head (and an in-memory body) in one `writev`, stream any remaining body while the
//! response head is awaited, then hand the response body out as a [`WorkerBody`] that reads the
//! socket as the client side pulls it. A body still uploading when the response head arrives
//! keeps going from the response body's polls, so nothing is spawned.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderMap;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use super::body::UpstreamBody;
use super::conn::WorkerConn;
use super::encode::chunk_header;
use super::pace::Pace;
use super::stream::WorkerStream;
use crate::error::ClientBodyError;
use crate::error::{ProxyError, RetryVerdict};
use crate::http1::{parse_head, BodyDecoder, Decoded, Framing};

/// Bytes read per system call while reading a response head.
const HEAD_READ: usize = 8 * 1024;
/// Largest read while streaming a response body.
const BODY_READ: usize = 64 * 1024;
/// How long the rest of a request is still sent after its response has ended (as long as
/// nginx's `lingering_time`): the client gets to read the response, and a client that never
/// finishes cannot hold the worker connection for ever.
const UPLOAD_FINISH_LIMIT: Duration = Duration::from_secs(30);

/// A failed exchange, and what is needed to send the request again.
pub struct CallError {
    /// What went wrong, where, and whether the request may go again.
    pub error: ProxyError,
    /// The body, handed back when nothing was sent and the request may go again.
    pub body: Option<UpstreamBody>,
}

/// Send a request (its encoded `head` and `body`) on `conn` and read the response head.
/// `method` decides whether the response has a body (HEAD's never does); `replayable` (an
/// idempotent request whose body weir holds) decides whether a failure after sending still
/// allows another try.
pub fn call(
    conn: WorkerConn,
    head: Bytes,
    body: UpstreamBody,
    chunked: bool,
    method: &Method,
    replayable: bool,
    pace: Pace,
) -> Call<'_> {
    Call {
        conn: Some(conn),
        upload: Upload::new(head, body, chunked, pace),
        method,
        replayable,
    }
}

/// The future of [`call`]. A named type rather than an `async fn`, so the connection and the
/// upload are stored once (an `async fn` would keep its arguments besides): this future sits
/// inside every request's future.
pub struct Call<'m> {
    conn: Option<WorkerConn>,
    upload: Upload,
    method: &'m Method,
    replayable: bool,
}

impl Call<'_> {
    /// Whether any byte of the request has reached the worker's socket (for a caller that
    /// gives up waiting).
    pub fn sent(&self) -> bool {
        self.upload.written > 0
    }
}

impl Future for Call<'_> {
    type Output = Result<(http::response::Parts, WorkerBody), CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(CallError {
                error: ProxyError::internal(
                    "weir: internal error (exchange polled after it ended)\n",
                ),
                body: None,
            }));
        };
        let parsed = ready!(poll_head(
            cx,
            conn,
            &mut this.upload,
            this.method,
            this.replayable
        ));
        let conn = this.conn.take();
        let upload = std::mem::replace(&mut this.upload, Upload::finished());
        Poll::Ready(match parsed {
            Ok((parts, framing, keep_alive)) => Ok((
                parts,
                WorkerBody {
                    conn,
                    decoder: BodyDecoder::new(framing),
                    // Usually the request is sent whole by now; only a body still streaming
                    // is carried on (boxed: the response body is moved several times).
                    upload: (!upload.is_finished()).then(|| Box::new(upload)),
                    keep_alive,
                    upgrade: framing == Framing::Upgrade,
                    stall: Stall::new(),
                    ahead: None,
                    trailers: None,
                    h2: None,
                    deadline: None,
                },
            )),
            Err(error) => {
                // Only a request of which no byte reached the socket gets its body back, and
                // only to go again; otherwise the upload drops it, draining the rest.
                let again = upload.written == 0 && error.retry() != RetryVerdict::None;
                Err(CallError {
                    error,
                    body: if again { upload.into_body() } else { None },
                })
            }
        })
    }
}

type HeadResult = Result<(http::response::Parts, Framing, bool), ProxyError>;

fn poll_head(
    cx: &mut Context<'_>,
    conn: &mut WorkerConn,
    upload: &mut Upload,
    method: &Method,
    replayable: bool,
) -> Poll<HeadResult> {
    match upload.poll_pump(cx, &mut conn.stream) {
        Poll::Ready(Err(PumpError::Worker(e))) => {
            // The worker stopped reading; it may still have answered (a 413, say): read on,
            // and report the write error only if no response comes.
            upload.abandon(e);
        }
        Poll::Ready(Err(client)) => {
            if let Some(failure) = client.client_failure(upload.written > 0) {
                return Poll::Ready(Err(failure));
            }
        }
        Poll::Ready(Ok(())) | Poll::Pending => {}
    }
    loop {
        if !conn.read_buf.is_empty() {
            match parse_head(&mut conn.read_buf, method, &mut conn.head_scan) {
                Ok(Some(head)) => {
                    return Poll::Ready(Ok((head.parts, head.framing, head.keep_alive)))
                }
                Ok(None) => {}
                Err(e) => {
                    let sent = upload.written > 0;
                    return Poll::Ready(Err(ProxyError::bad_response(e.client_message(), sent)));
                }
            }
        }
        let reused = conn.reused;
        let failed = |e, upload: &Upload| {
            ProxyError::connection_failed(e, upload.written > 0, replayable, reused)
        };
        match conn.poll_fill(cx, HEAD_READ) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => {
                let error = upload.write_error.take().unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the worker closed the connection before responding",
                    )
                });
                return Poll::Ready(Err(failed(error, upload)));
            }
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(failed(e, upload))),
        }
    }
}

/// A worker's response body, read from the connection as the client side polls it. Ends with
/// the connection reusable only when the body was complete, the request fully sent, and the
/// worker did not ask to close.
pub struct WorkerBody {
    conn: Option<WorkerConn>,
    decoder: BodyDecoder,
    /// The rest of the request, when it was still uploading as the response head arrived.
    upload: Option<Box<Upload>>,
    keep_alive: bool,
    upgrade: bool,
    /// The deadline for the worker's next body bytes (`upstream.read_timeout`).
    stall: Stall,
    /// Body bytes read before the head was passed on ([`WorkerBody::poll_prefetch`]), handed
    /// out first.
    ahead: Option<Bytes>,
    /// The trailers of a body read whole ahead, handed out after `ahead` (boxed: rare).
    trailers: Option<Box<HeaderMap>>,
    /// The body of an HTTP/2 worker's response (no connection of its own to manage).
    h2: Option<Box<hyper::body::Incoming>>,
    /// When the body is cut short, and the trailers that then end it (a gRPC deadline).
    deadline: Option<Box<Deadline>>,
}

/// When a body is cut short, and the trailers that then end it.
type Deadline = (Pin<Box<Sleep>>, fn() -> HeaderMap);

impl WorkerBody {
    /// The body of an HTTP/2 worker's response.
    pub fn from_h2(body: hyper::body::Incoming) -> Self {
        WorkerBody {
            conn: None,
            decoder: BodyDecoder::new(Framing::Empty),
            upload: None,
            keep_alive: false,
            upgrade: false,
            stall: Stall::new(),
            ahead: None,
            trailers: None,
            h2: Some(Box::new(body)),
            deadline: None,
        }
    }

    /// End the body at `at` with the trailers `ending` makes (an HTTP/2 worker's body; the
    /// worker's stream is reset then).
    pub fn set_deadline(&mut self, at: Instant, ending: fn() -> HeaderMap) {
        self.deadline = Some(Box::new((Box::pin(tokio::time::sleep_until(at)), ending)));
    }

    /// Give up on the body when the worker sends none of it for `timeout` (while the request
    /// is still uploading, the worker may rightly wait for it, so that time is not counted).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stall.timeout = timeout;
    }

    /// The connection, once the body has ended cleanly and the connection can carry another
    /// request.
    pub fn take_reusable(&mut self) -> Option<WorkerConn> {
        if self.decoder.is_done() && self.keep_alive && self.request_sent() {
            self.conn.take()
        } else {
            None
        }
    }

    /// The socket and any bytes already read past the head, after a 101 response to a request
    /// whose body was fully sent.
    pub fn into_upgraded(mut self) -> Option<(WorkerStream, Bytes)> {
        if !self.upgrade || !self.request_sent() {
            return None;
        }
        let (stream, rest) = self.conn.take()?.into_parts();
        Some((stream, rest.freeze()))
    }

    /// The whole request reached the worker.
    fn request_sent(&self) -> bool {
        self.upload.as_ref().is_none_or(|u| u.is_finished())
    }

    /// Read the first body frame, then whatever else the worker has already sent, without
    /// waiting beyond that first frame (a streaming response, SSE or a long poll, is not
    /// waited for). `Ready(Ok(true))` when the body is whole in hand and at most `limit`
    /// bytes: the caller can then [`release`](WorkerBody::release) the worker. Either way what
    /// was read is handed out first when the body is polled. A failure here (the worker reset,
    /// closed early, sent a malformed chunk, or stalled past the read timeout) comes before
    /// the client has seen anything of the response, so it can still get a 502 or 504.
    ///
    /// Everything after the first frame is taken within one poll, so the frames are joined in
    /// one local buffer (and a single frame, the usual case, is kept as it is, uncopied).
    pub fn poll_prefetch(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<bool, ProxyError>> {
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut trailers: Option<HeaderMap> = None;
        let mut total = 0usize;
        let whole = loop {
            match self.poll_body(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        total = total.saturating_add(data.len());
                        match (&mut joined, first.take()) {
                            (Some(buf), _) => buf.extend_from_slice(&data),
                            (None, Some(earlier)) => {
                                let mut buf =
                                    BytesMut::with_capacity(total.min(limit.saturating_add(1)));
                                buf.extend_from_slice(&earlier);
                                buf.extend_from_slice(&data);
                                joined = Some(buf);
                            }
                            (None, None) => first = Some(data),
                        }
                        if total > limit {
                            break false;
                        }
                    }
                    // Kept aside until the loop ends: `poll_body` hands out what is stored.
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(None) => break true,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Pending if total == 0 && trailers.is_none() => return Poll::Pending,
                Poll::Pending => break false,
            }
        };
        self.ahead = joined.map(BytesMut::freeze).or(first);
        self.trailers = trailers.map(Box::new);
        Poll::Ready(Ok(whole))
    }

    /// After [`poll_prefetch`](WorkerBody::poll_prefetch) found the body whole: let go of the
    /// worker. Returns the connection when it can carry another request; otherwise it closes
    /// here (after the rest of a request still uploading, sent in the background). The body
    /// read ahead stays for the client.
    pub fn release(&mut self) -> Option<WorkerConn> {
        let reusable = self.take_reusable();
        if reusable.is_none() {
            self.finish_in_background();
        }
        reusable
    }

    /// A response can end before its request has finished uploading (a 413 or a 401 to a
    /// large body). The rest still goes to the worker, in the background: dropping the
    /// client's body unread would make hyper close the client connection with request bytes
    /// unread, and the reset the kernel then sends can destroy the response before the client
    /// has read it. The connection closes afterwards (or here, with nothing left to send).
    fn finish_in_background(&mut self) {
        let (Some(conn), Some(upload)) = (self.conn.take(), self.upload.take()) else {
            return;
        };
        if upload.is_finished() || upload.abandoned {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(finish_upload(conn, upload));
        }
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        if let Some(data) = self.ahead.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
        }
        if let Some(body) = self.h2.as_mut() {
            if let Some(deadline) = self.deadline.as_mut() {
                if deadline.0.as_mut().poll(cx).is_ready() {
                    let ending = deadline.1;
                    self.deadline = None;
                    self.h2 = None;
                    return Poll::Ready(Some(Ok(Frame::trailers(ending()))));
                }
            }
            return match Pin::new(&mut **body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.stall.disarm();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    self.h2 = None;
                    Poll::Ready(Some(Err(ProxyError::mid_response(io::Error::other(e)))))
                }
                Poll::Ready(None) => {
                    self.h2 = None;
                    Poll::Ready(None)
                }
                Poll::Pending => match self.stall.poll_expired(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ProxyError::read_timed_out()))),
                    Poll::Pending => Poll::Pending,
                },
            };
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(upload) = self.upload.as_mut().filter(|u| !u.is_finished()) {
            match upload.poll_pump(cx, &mut conn.stream) {
                Poll::Ready(Err(PumpError::Worker(e))) => upload.abandon(e),
                Poll::Ready(Err(client)) => {
                    if let Some(failure) = client.client_failure(true) {
                        return Poll::Ready(Some(Err(failure)));
                    }
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            match self.decoder.decode(&mut conn.read_buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Decoded::Done) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(ProxyError::bad_body(e.client_message())))),
            }
            let want = self
                .decoder
                .remaining()
                .map_or(BODY_READ, |left| left.clamp(1, BODY_READ as u64) as usize);
            match conn.poll_fill(cx, want) {
                Poll::Pending => {
                    // Only a wait on the worker alone is timed: while the request is still
                    // uploading, the worker may be waiting for the client.
                    let waiting_on_worker = self
                        .upload
                        .as_ref()
                        .is_none_or(|u| u.is_finished() || u.abandoned);
                    if waiting_on_worker && self.stall.poll_expired(cx).is_ready() {
                        return Poll::Ready(Some(Err(ProxyError::read_timed_out())));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    if !self.decoder.eof() {
                        return Poll::Ready(Some(Err(ProxyError::mid_response(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the worker closed the connection mid-body",
                        )))));
                    }
                    self.keep_alive = false;
                }
                Poll::Ready(Ok(_)) => self.stall.disarm(),
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(ProxyError::mid_response(e)))),
            }
        }
    }
}

impl Drop for WorkerBody {
    fn drop(&mut self) {
        self.finish_in_background();
    }
}

/// Send the rest of a request whose response has already ended, for at most
/// [`UPLOAD_FINISH_LIMIT`]; the connection is closed afterwards.
async fn finish_upload(mut conn: WorkerConn, mut upload: Box<Upload>) {
    let pump = std::future::poll_fn(|cx| upload.poll_pump(cx, &mut conn.stream));
    let _ = tokio::time::timeout(UPLOAD_FINISH_LIMIT, pump).await;
}

impl Body for WorkerBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        let polled = this.poll_body(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // The exchange is over: the connection closes now, not when hyper drops the body.
            this.conn = None;
            this.upload = None;
            this.h2 = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none()
            && self.trailers.is_none()
            && self
                .h2
                .as_ref()
                .map_or(self.decoder.is_done(), |b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead.as_ref().map_or(0, |b| b.len() as u64);
        if let Some(body) = &self.h2 {
            let inner = body.size_hint();
            return match inner.exact() {
                Some(left) if self.trailers.is_none() => SizeHint::with_exact(left + ahead),
                _ => {
                    let mut hint = SizeHint::default();
                    hint.set_lower(ahead + inner.lower());
                    hint
                }
            };
        }
        match self.decoder.remaining() {
            // Trailers need chunked framing on the way out: no exact length then.
            Some(left) if self.trailers.is_none() => SizeHint::with_exact(left + ahead),
            _ => {
                let mut hint = SizeHint::default();
                hint.set_lower(ahead);
                hint
            }
        }
    }
}

/// The read deadline of one response body: one `Sleep`, made the first time the body waits on
/// the worker and reset for every later wait, so a response that streams in many reads costs
/// one timer (and a small response read whole with its head costs none).
struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait: set when a read found nothing, cleared by bytes.
    armed: bool,
}

impl Stall {
    fn new() -> Self {
        Stall {
            timeout: Duration::MAX,
            timer: None,
            armed: false,
        }
    }

    /// Start timing the current wait unless it is timed already; `Ready` once it has lasted
    /// `timeout`. A timeout too long to be represented never fires.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let Some(deadline) = Instant::now().checked_add(self.timeout) else {
                return Poll::Pending;
            };
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Bytes came: the next wait starts its own clock.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

/// Why pumping the request body stopped.
enum PumpError {
    /// Writing to the worker failed.
    Worker(io::Error),
    /// The client's body failed.
    Client(ClientBodyError),
    /// The client sent no more of its body within `server.request_body_timeout`, or sent it
    /// slower than `server.min_data_rate`.
    ClientStalled,
}

impl PumpError {
    /// The request path's failure for a client-side pump error (`sent`: bytes reached the
    /// worker); `None` for a worker-side one, which the caller handles.
    fn client_failure(&self, sent: bool) -> Option<ProxyError> {
        match self {
            PumpError::Worker(_) => None,
            PumpError::Client(e) => Some(ProxyError::client_body(e, sent)),
            PumpError::ClientStalled => Some(ProxyError::client_stalled(sent)),
        }
    }
}

/// The deadline on a streamed request body (its [`Pace`]: the next bytes within the body
/// timeout, and on average no slower than the minimum rate), armed only while the body is
/// pending (a body that keeps arriving never touches the timer wheel).
struct StallTimer {
    pace: Pace,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the body was first polled and when it last brought bytes (set on first use: a
    /// request with no streamed body reads no clock), and how many bytes so far.
    start: Option<Instant>,
    last: Option<Instant>,
    received: u64,
    /// Bytes arrived since the deadline was set: the next wait starts a fresh one.
    progressed: bool,
}

impl StallTimer {
    fn new(pace: Pace) -> Self {
        StallTimer {
            pace,
            sleep: None,
            start: None,
            last: None,
            received: 0,
            progressed: false,
        }
    }

    /// `n` bytes of the body came.
    fn brought(&mut self, n: usize) {
        let now = Instant::now();
        self.start.get_or_insert(now);
        self.last = Some(now);
        self.received += n as u64;
        self.progressed = true;
    }

    /// The body is pending: `Ready` once it is too slow.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let last = *self.last.get_or_insert(start);
        let deadline = self.pace.deadline(start, last, self.received);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if std::mem::take(&mut self.progressed) {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

/// The request bytes still to go: queued segments (head, in-memory body, chunk framing), then
/// whatever a streamed body yields.
struct Upload {
    queue: Segments,
    body: Option<UpstreamBody>,
    chunked: bool,
    /// Request bytes written so far.
    written: u64,
    /// The write error that stopped the upload, kept to explain a missing response.
    write_error: Option<io::Error>,
    /// The worker stopped taking the request; nothing more is written.
    abandoned: bool,
    /// Bounds the wait for the client's next body bytes.
    stall: StallTimer,
    /// Bytes were written since the last flush (TLS holds records until flushed).
    unflushed: bool,
}

impl Upload {
    /// Nothing (left) to send.
    fn finished() -> Self {
        Upload {
            queue: Segments::default(),
            body: None,
            chunked: false,
            written: 0,
            write_error: None,
            abandoned: false,
            stall: StallTimer::new(Pace::unchecked()),
            unflushed: false,
        }
    }

    fn new(head: Bytes, body: UpstreamBody, chunked: bool, pace: Pace) -> Self {
        let mut queue = Segments::default();
        queue.push(head);
        let body = match body {
            UpstreamBody::Bytes(bytes) => {
                if let Some(bytes) = bytes {
                    queue.push(bytes);
                }
                None
            }
            streamed => Some(streamed),
        };
        Upload {
            queue,
            body,
            chunked,
            written: 0,
            write_error: None,
            abandoned: false,
            stall: StallTimer::new(pace),
            unflushed: false,
        }
    }

    fn is_finished(&self) -> bool {
        !self.abandoned && self.queue.is_empty() && self.body.is_none() && !self.unflushed
    }

    fn abandon(&mut self, error: io::Error) {
        self.abandoned = true;
        self.write_error = Some(error);
        self.queue = Segments::default();
        drain_in_background(self.body.take());
    }

    /// The streamed body, when nothing of it has been taken.
    fn into_body(mut self) -> Option<UpstreamBody> {
        self.body.take()
    }

    /// Write what can be written now. `Ready(Ok)` once everything is sent.
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut WorkerStream,
    ) -> Poll<Result<(), PumpError>> {
        if self.abandoned {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !self.queue.is_empty() {
                let slices = self.queue.io_slices();
                match Pin::new(&mut *stream).poll_write_vectored(cx, slices.as_slice()) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(PumpError::Worker(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n as u64;
                        self.queue.advance(n);
                        self.unflushed = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Worker(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.unflushed {
                // A no-op on plain TCP; TLS sends the records it holds.
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Worker(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let polled = Pin::new(body).poll_frame(cx);
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    self.stall.brought(frame.data_ref().map_or(0, Bytes::len))
                }
                Poll::Ready(_) => self.stall.progressed = true,
                Poll::Pending => {}
            }
            match polled {
                Poll::Pending => {
                    return match self.stall.poll_stalled(cx) {
                        Poll::Ready(()) => {
                            // A stalled body is not drained: dropped, so the connection closes.
                            self.body = None;
                            Poll::Ready(Err(PumpError::ClientStalled))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(PumpError::Client(e))),
                Poll::Ready(None) => {
                    self.body = None;
                    if self.chunked {
                        self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        self.queue.push(chunk_header(data.len()));
                        self.queue.push(data);
                        self.queue.push(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => self.queue.push(data),
                    Err(frame) => {
                        // Trailers end a chunked body; a length-delimited one has no place for
                        // them, so they are dropped there.
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            self.queue.push(last_chunk_with(&trailers));
                            self.chunked = false;
                        }
                    }
                },
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        drain_in_background(self.body.take());
    }
}

/// Read the rest of a client's streamed body and drop it, for at most 30 s
/// (`UPLOAD_FINISH_LIMIT`). A body left unread would make hyper close the client connection
/// with request bytes unread, and the kernel's reset can destroy the response (a 502 or 504,
/// say) before the client has read it: the same reason nginx lingers before closing.
pub fn drain_in_background(body: Option<UpstreamBody>) {
    let Some(mut body) = body else {
        return;
    };
    if matches!(body, UpstreamBody::Bytes(_)) || body.is_end_stream() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(UPLOAD_FINISH_LIMIT, drain).await;
        });
    }
}

/// The last chunk followed by a trailer section.
fn last_chunk_with(trailers: &HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// Up to three byte strings waiting to be written with one `writev`.
#[derive(Default)]
struct Segments {
    parts: [Bytes; 3],
    start: usize,
    end: usize,
}

impl Segments {
    fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.end == self.parts.len() {
            // Full only if a caller pushes more than one frame's worth; keep order by merging.
            let merged: Vec<u8> = self.parts[self.end - 1]
                .iter()
                .chain(bytes.iter())
                .copied()
                .collect();
            self.parts[self.end - 1] = Bytes::from(merged);
            return;
        }
        self.parts[self.end] = bytes;
        self.end += 1;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn io_slices(&self) -> SliceArray<'_> {
        let mut array = SliceArray {
            slices: [IoSlice::new(&[]); 3],
            len: 0,
        };
        for part in &self.parts[self.start..self.end] {
            array.slices[array.len] = IoSlice::new(part);
            array.len += 1;
        }
        array
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.end {
            let part = &mut self.parts[self.start];
            if n >= part.len() {
                n -= part.len();
                *part = Bytes::new();
                self.start += 1;
            } else {
                part.advance(n);
                n = 0;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

struct SliceArray<'a> {
    slices: [IoSlice<'a>; 3],
    len: usize,
}

impl<'a> SliceArray<'a> {
    fn as_slice(&self) -> &[IoSlice<'a>] {
        &self.slices[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_advance_across_parts() {
        let mut s = Segments::default();
        s.push(Bytes::from_static(b"abc"));
        s.push(Bytes::from_static(b""));
        s.push(Bytes::from_static(b"defg"));
        assert_eq!(s.io_slices().as_slice().len(), 2);
        s.advance(4);
        assert_eq!(&*s.io_slices().as_slice()[0], b"efg");
        s.advance(3);
        assert!(s.is_empty());
        s.push(Bytes::from_static(b"1"));
        s.push(Bytes::from_static(b"2"));
        s.push(Bytes::from_static(b"3"));
        s.push(Bytes::from_static(b"4"));
        let joined: Vec<u8> = s
            .io_slices()
            .as_slice()
            .iter()
            .flat_map(|sl| sl.iter().copied())
            .collect();
        assert_eq!(joined, b"1234");
    }

    /// Poll `stall` once, as a body does on a read that found nothing.
    async fn expired(stall: &mut Stall) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(stall.poll_expired(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_deadline_counts_each_wait_from_its_start_with_one_timer() {
        let mut stall = Stall::new();
        stall.timeout = Duration::from_secs(60);
        assert!(!expired(&mut stall).await, "a fresh wait");
        tokio::time::advance(Duration::from_secs(59)).await;
        // Polled again within the same wait (a spurious wake): the clock is not restarted.
        assert!(!expired(&mut stall).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(expired(&mut stall).await, "61 s into one wait");
        // Bytes came: the next wait gets its own 60 s, on the same timer.
        stall.disarm();
        let timer = stall.timer.as_ref().map(|t| &**t as *const Sleep);
        assert!(!expired(&mut stall).await);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!expired(&mut stall).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(expired(&mut stall).await);
        assert_eq!(stall.timer.as_ref().map(|t| &**t as *const Sleep), timer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_deadline_too_far_to_represent_never_fires() {
        let mut stall = Stall::new();
        stall.timeout = Duration::MAX;
        assert!(!expired(&mut stall).await);
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        assert!(!expired(&mut stall).await);
    }

    #[test]
    fn trailers_close_a_chunked_body() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "9".parse().unwrap());
        assert_eq!(&last_chunk_with(&t)[..], b"0\r\nx-sum: 9\r\n\r\n");
    }
}
