//! One HTTP/1.1 client connection served through weir's own codec: read a head into the
//! connection's buffer, hand the request to the service with a body fed from that same buffer,
//! write the response head and as much of its body as is ready in one write, and go on with
//! the next request (pipelined ones in order). When the connection waits for a next request
//! and nothing has arrived, both buffers are given back, so an idle keep-alive connection
//! holds none; the head timer is one per connection, reset for each request. A 101 hands the
//! connection (and any bytes read past the request head) to the tunnel.

use std::fmt::Display;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};

use super::date::with_date;
use super::encode::{encode_response_head, put_chunk_size, Persistence, ResponseFraming};
use super::head::{parse_request_head, RequestFraming, RequestHead};
use crate::http1::{BodyDecoder, Decoded, Framing};
pub use crate::http1::{BodyError, Io, PendingUpgrade, RequestBody, Upgraded};
use crate::values::connection;
use crate::values::lines::SectionScan;

/// Read more when less than this much room is left in the read buffer.
const READ_RESERVE: usize = 4 * 1024;
/// Write what has gathered once it reaches this size, even if more body is ready.
const WRITE_HIGH_WATER: usize = 16 * 1024;
/// Longest a request body is read on after its response was sent (nginx lingers 30 s too).
const BODY_FINISH_LIMIT: Duration = Duration::from_secs(30);

/// The time and size limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_head: usize,
    /// Time to send a request head, from the moment the connection waits for one (so it also
    /// bounds idle time between keep-alive requests).
    pub header_read_timeout: Duration,
    /// Time allowed between two reads of a request body.
    pub body_read_timeout: Duration,
}

/// Feeds one request's body from the read buffer to its [`RequestBody`].
struct Feeder {
    decoder: BodyDecoder,
    chunks: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
}

/// What one step of feeding did.
enum Fed {
    /// Handed on some bytes or read more; call again.
    More,
    /// The body is complete (the service has all of it, or dropped it after it was read).
    Done,
    /// The body broke off; the connection cannot carry another request.
    Broken,
}

/// Serve requests on `io` with `service` until the client leaves, a response ends the
/// connection, a 101 hands it to a tunnel, or `shutdown` flips (the request in progress is
/// answered first, with `connection: close`). `rbuf` holds what was already read from the
/// connection (the bytes the protocol was told by).
pub async fn serve<IO, S, F, B>(
    mut io: IO,
    mut rbuf: BytesMut,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    mut service: S,
) -> std::io::Result<()>
where
    IO: Io,
    S: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let mut wbuf = BytesMut::new();
    let mut closing = *shutdown.borrow();
    // One timer for the connection's life. It is moved only when it fires early: each head
    // wait sets its own deadline, and a timer that fires before it is set again to it.
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    loop {
        closing = closing || shutdown.has_changed().unwrap_or(true);
        if closing && rbuf.is_empty() {
            let _ = io.shutdown().await;
            return Ok(());
        }
        let mut wait = HeadWait {
            io: &mut io,
            rbuf: &mut rbuf,
            wbuf: &mut wbuf,
            limits: &limits,
            deadline: Instant::now() + limits.header_read_timeout,
            scan: SectionScan::new(),
            shutdown: &mut shutdown,
            closing: &mut closing,
        };
        let head = match wait.read_head(timer.as_mut()).await? {
            HeadRead::Head(head) => head,
            HeadRead::Closed => return Ok(()),
            HeadRead::Refused(status, message) => {
                write_error(&mut io, &mut wbuf, status, message).await?;
                return Ok(());
            }
        };
        // Everything one request needs lives in this future, boxed: a connection waiting for
        // its next request holds none of it.
        let next = Box::pin(exchange(
            head,
            &mut io,
            &mut rbuf,
            &mut wbuf,
            &limits,
            closing,
            &mut service,
        ))
        .await?;
        match next {
            Next::Request => {}
            Next::Close => {
                let _ = io.shutdown().await;
                return Ok(());
            }
            Next::Switch(upgrade) => {
                let read_ahead = rbuf.split().freeze();
                let _ = upgrade.send(Upgraded {
                    io: Box::new(io),
                    read_ahead,
                });
                return Ok(());
            }
        }
    }
}

/// What follows a request on its connection.
enum Next {
    /// The next request.
    Request,
    /// Nothing: the connection closes.
    Close,
    /// The protocol it switched to: the connection goes to the upgrade.
    Switch(oneshot::Sender<Upgraded>),
}

/// One request on the connection, from its head to the end of its response (and of its
/// body).
async fn exchange<IO, S, F, B>(
    head: RequestHead,
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    limits: &Limits,
    closing: bool,
    service: &mut S,
) -> std::io::Result<Next>
where
    IO: Io,
    S: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let RequestHead {
        mut parts,
        framing,
        keep_alive,
        expect_continue,
    } = head;
    let head_request = parts.method == Method::HEAD;
    let version = parts.version;
    // Only a request that names a protocol to switch to can be switched.
    let upgrade = parts.headers.contains_key(header::UPGRADE).then(|| {
        let (tx, rx) = oneshot::channel();
        parts.extensions.insert(PendingUpgrade::new(rx));
        tx
    });
    let (body, feeder) = match framing {
        RequestFraming::Empty => (RequestBody::empty(), None),
        RequestFraming::Length(n) => body_channel(Framing::Length(n), SizeHint::with_exact(n)),
        RequestFraming::Chunked => body_channel(Framing::Chunked, SizeHint::default()),
    };
    if expect_continue && feeder.is_some() {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let request = Request::from_parts(parts, body);
    let mut answer = pin!(service(request));
    let mut side = RequestSide {
        feeder,
        io,
        rbuf,
        limits,
        keep_alive,
    };

    // Until the response head: feed the body while the service works; once it is all
    // read, watch for the client closing (it is gone: the service is dropped, and the
    // request ends as the client's).
    let mut watch_close = true;
    let response = loop {
        if side.feeder.is_some() {
            tokio::select! {
                biased;
                response = answer.as_mut() => break response,
                fed = feed(side.feeder.as_mut(), side.io, side.rbuf, side.limits) => side.fed(fed?),
            }
        } else if watch_close {
            tokio::select! {
                biased;
                response = answer.as_mut() => break response,
                closed = watch_for_close(side.io, side.rbuf, side.limits.max_head) => {
                    if closed? {
                        return Ok(Next::Close);
                    }
                    // A full buffer of pipelined requests: stop reading until this one
                    // is answered.
                    watch_close = false;
                }
            }
        } else {
            break answer.as_mut().await;
        }
    };

    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
    let bodiless = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let response_framing = if switching {
        ResponseFraming::Switching
    } else if bodiless {
        ResponseFraming::Bodiless
    } else if let Some(n) = body.size_hint().exact() {
        ResponseFraming::Length(n)
    } else if version == Version::HTTP_11 {
        ResponseFraming::Chunked
    } else {
        ResponseFraming::UntilClose
    };
    if response_framing == ResponseFraming::UntilClose
        || parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| connection::value_lists(v, b"close"))
        || (parts.status.is_informational() && !switching)
    {
        side.keep_alive = false;
    }
    // Whether the connection can go on must be known for the head. A body still being
    // read (by the service, or by the proxy reading it to drop it) is read to its end after
    // the response, and the connection goes on. One nobody reads any more can be skipped
    // if the rest of it is already buffered; otherwise the connection ends with this
    // response, the rest still read (and dropped) for a while first, so closing with
    // bytes unread cannot reset the answer away before the client has it.
    let mut unwanted = false;
    if let Some(f) = side.feeder.as_mut() {
        if f.chunks.is_closed() && drain_buffered(f, side.rbuf) {
            side.feeder = None;
        } else if f.chunks.is_closed() {
            unwanted = true;
        }
    }
    let close_after = !switching && (!side.keep_alive || unwanted || closing);
    let after = if close_after {
        Persistence::Close
    } else if version == Version::HTTP_10 {
        Persistence::KeepAliveAnnounced
    } else {
        Persistence::KeepAlive
    };
    with_date(|date| {
        encode_response_head(
            wbuf,
            parts.status,
            &parts.headers,
            response_framing,
            after,
            date,
        )
    });
    if !bodiless {
        write_body(wbuf, &mut body, response_framing, &mut side).await?;
    }
    if !wbuf.is_empty() {
        side.io.write_all(wbuf).await?;
        wbuf.clear();
    }
    side.io.flush().await?;
    let finished = side.finish_body().await?;
    let close_after = close_after || !finished;
    Ok(match upgrade {
        Some(upgrade) if switching => Next::Switch(upgrade),
        _ if close_after => Next::Close,
        _ => Next::Request,
    })
}

fn body_channel(framing: Framing, hint: SizeHint) -> (RequestBody, Option<Feeder>) {
    let (tx, rx) = mpsc::channel(2);
    let body = RequestBody::new(rx, hint);
    let feeder = Feeder {
        decoder: BodyDecoder::new(framing),
        chunks: tx,
    };
    (body, Some(feeder))
}

/// What waiting for a head gave. Only ever a return value, never stored: boxing the head
/// would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(RequestHead),
    Closed,
    Refused(StatusCode, &'static str),
}

/// A connection waiting for its next request head.
struct HeadWait<'a, IO> {
    io: &'a mut IO,
    rbuf: &'a mut BytesMut,
    wbuf: &'a mut BytesMut,
    limits: &'a Limits,
    /// When the head must be complete.
    deadline: Instant,
    /// How far the search for the head's end has gone.
    scan: SectionScan,
    shutdown: &'a mut watch::Receiver<bool>,
    closing: &'a mut bool,
}

impl<IO: Io> HeadWait<'_, IO> {
    /// Read until a head parses, the client leaves, the deadline passes or shutdown comes
    /// while nothing of a head has arrived. `timer` fires at the deadline or before it.
    async fn read_head(&mut self, mut timer: Pin<&mut Sleep>) -> std::io::Result<HeadRead> {
        loop {
            match parse_request_head(self.rbuf, self.limits.max_head, &mut self.scan) {
                Ok(Some(head)) => return Ok(HeadRead::Head(head)),
                Ok(None) => {}
                Err(e) => return Ok(HeadRead::Refused(e.status(), e.client_message())),
            }
            let (io, rbuf, wbuf) = (&mut *self.io, &mut *self.rbuf, &mut *self.wbuf);
            tokio::select! {
                read = poll_fn(|cx| poll_read_or_let_go(io, rbuf, wbuf, cx)) => {
                    if read? == 0 {
                        // A close between requests is the normal end; mid-head, nothing to
                        // answer.
                        return Ok(HeadRead::Closed);
                    }
                }
                () = timer.as_mut() => {
                    if Instant::now() < self.deadline {
                        timer.as_mut().reset(self.deadline);
                        continue;
                    }
                    return Ok(if self.rbuf.is_empty() {
                        HeadRead::Closed
                    } else {
                        HeadRead::Refused(StatusCode::REQUEST_TIMEOUT, "weir: request head timed out\n")
                    });
                }
                _ = self.shutdown.changed(), if !*self.closing => {
                    *self.closing = true;
                    if self.rbuf.is_empty() {
                        return Ok(HeadRead::Closed);
                    }
                }
            }
        }
    }
}

/// Read into `rbuf`. With nothing buffered, a connection takes no read buffer before the
/// stream is readable, and gives both buffers back when the read has to wait: between
/// requests, an idle keep-alive connection holds none.
pub(crate) fn poll_read_or_let_go<IO: Io>(
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if rbuf.capacity() == 0 {
        std::task::ready!(io.poll_read_ready(cx))?;
    }
    make_room(rbuf);
    let polled = pin!(io.read_buf(rbuf)).poll(cx);
    if polled.is_pending() && rbuf.is_empty() {
        *rbuf = BytesMut::new();
        *wbuf = BytesMut::new();
    }
    polled
}

/// Room for the next read: more when less than a quarter of [`READ_RESERVE`] is left.
fn make_room(rbuf: &mut BytesMut) {
    if rbuf.capacity() - rbuf.len() < READ_RESERVE / 4 {
        rbuf.reserve(READ_RESERVE);
    }
}

/// Read on while a request waits for its answer, keeping what comes (pipelined requests) up
/// to `max_head`: true once the client has closed; false when the buffer is full.
async fn watch_for_close<IO: Io>(
    io: &mut IO,
    rbuf: &mut BytesMut,
    max_head: usize,
) -> std::io::Result<bool> {
    while rbuf.len() < max_head {
        make_room(rbuf);
        if io.read_buf(rbuf).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Hand on what the buffer holds of the body, or read more. Waits while the service has not
/// taken the pieces before (backpressure: at most two wait in the channel). Cancel-safe: a slot
/// in the channel is reserved before anything leaves the buffer, and reads are cancel-safe, so
/// dropping this future loses no byte.
async fn feed<R: AsyncRead + Unpin>(
    feeder: Option<&mut Feeder>,
    reader: &mut R,
    rbuf: &mut BytesMut,
    limits: &Limits,
) -> std::io::Result<Fed> {
    let Some(feeder) = feeder else {
        return Ok(Fed::Done);
    };
    // No slot when the service has dropped its body: the rest is read and discarded, so the
    // next request starts where it should.
    let slot = feeder.chunks.reserve().await.ok();
    let fail = |slot: Option<mpsc::Permit<'_, _>>, e: BodyError| {
        if let Some(slot) = slot {
            slot.send(Err(e));
        }
    };
    match feeder.decoder.decode(rbuf) {
        Ok(Decoded::Data(data)) => {
            if let Some(slot) = slot {
                slot.send(Ok(Frame::data(data)));
            }
            Ok(Fed::More)
        }
        Ok(Decoded::Trailers(trailers)) => {
            if let Some(slot) = slot {
                slot.send(Ok(Frame::trailers(trailers)));
            }
            Ok(Fed::Done)
        }
        Ok(Decoded::Done) => Ok(Fed::Done),
        Ok(Decoded::NeedMore) => {
            make_room(rbuf);
            match tokio::time::timeout(limits.body_read_timeout, reader.read_buf(rbuf)).await {
                Ok(Ok(0)) => {
                    fail(slot, BodyError::Incomplete);
                    Ok(Fed::Broken)
                }
                Ok(Ok(_)) => Ok(Fed::More),
                Ok(Err(e)) => {
                    fail(slot, BodyError::Incomplete);
                    Err(e)
                }
                Err(_) => {
                    fail(slot, BodyError::Stalled);
                    Ok(Fed::Broken)
                }
            }
        }
        Err(_) => {
            fail(slot, BodyError::Malformed);
            Ok(Fed::Broken)
        }
    }
}

/// Discard the rest of an unread body if all of it is already buffered; false if not.
fn drain_buffered(feeder: &mut Feeder, rbuf: &mut BytesMut) -> bool {
    loop {
        match feeder.decoder.decode(rbuf) {
            Ok(Decoded::Data(_)) => {}
            Ok(Decoded::Trailers(_)) | Ok(Decoded::Done) => return true,
            Ok(Decoded::NeedMore) | Err(_) => return false,
        }
    }
}

/// Write the body after the head already in `wbuf`: everything that is ready goes out in one
/// write, the rest as it comes. While it waits for the body, the request body is still fed
/// (a service may answer before it has read all of the request).
async fn write_body<IO, B>(
    wbuf: &mut BytesMut,
    body: &mut B,
    framing: ResponseFraming,
    request: &mut RequestSide<'_, IO>,
) -> std::io::Result<()>
where
    IO: Io,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let chunked = framing == ResponseFraming::Chunked;
    loop {
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing ready: send what has gathered, then wait (feeding the request).
                if !wbuf.is_empty() {
                    request.io.write_all(wbuf).await?;
                    wbuf.clear();
                }
                loop {
                    if request.feeder.is_none() {
                        break body.frame().await;
                    }
                    tokio::select! {
                        biased;
                        next = body.frame() => break next,
                        fed = feed(request.feeder.as_mut(), request.io, request.rbuf, request.limits) => {
                            request.fed(fed?);
                        }
                    }
                }
            }
        };
        match next {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        put_chunk_size(wbuf, data.len());
                        wbuf.extend_from_slice(&data);
                        wbuf.extend_from_slice(b"\r\n");
                    } else {
                        wbuf.extend_from_slice(&data);
                    }
                }
                Err(frame) => {
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        wbuf.extend_from_slice(b"0\r\n");
                        put_trailers(wbuf, &trailers);
                        wbuf.extend_from_slice(b"\r\n");
                        return Ok(());
                    }
                }
            },
            Some(Err(e)) => {
                // The client must not take a cut-off body for a whole one: no last chunk, and
                // the connection ends.
                return Err(std::io::Error::other(format!("response body failed: {e}")));
            }
            None => {
                if chunked {
                    wbuf.extend_from_slice(b"0\r\n\r\n");
                }
                return Ok(());
            }
        }
        if wbuf.len() >= WRITE_HIGH_WATER {
            request.io.write_all(wbuf).await?;
            wbuf.clear();
        }
    }
}

/// The request side of the connection while its response is written.
struct RequestSide<'a, IO> {
    feeder: Option<Feeder>,
    io: &'a mut IO,
    rbuf: &'a mut BytesMut,
    limits: &'a Limits,
    keep_alive: bool,
}

impl<IO: Io> RequestSide<'_, IO> {
    /// After the response: read the rest of the request body (handing it on while anyone
    /// reads it, dropping it after), for at most [`BODY_FINISH_LIMIT`]. True when it ended
    /// cleanly, so the next request starts where it should.
    async fn finish_body(&mut self) -> std::io::Result<bool> {
        let Some(mut feeder) = self.feeder.take() else {
            return Ok(self.keep_alive);
        };
        let finish = async {
            loop {
                match feed(Some(&mut feeder), self.io, self.rbuf, self.limits).await? {
                    Fed::More => {}
                    Fed::Done => return Ok::<_, std::io::Error>(true),
                    Fed::Broken => return Ok(false),
                }
            }
        };
        match tokio::time::timeout(BODY_FINISH_LIMIT, finish).await {
            Ok(finished) => Ok(finished? && self.keep_alive),
            Err(_) => {
                // Never let a cut-off body end as if complete.
                let _ = feeder.chunks.try_send(Err(BodyError::Incomplete));
                Ok(false)
            }
        }
    }

    fn fed(&mut self, fed: Fed) {
        match fed {
            Fed::More => {}
            Fed::Done => self.feeder = None,
            Fed::Broken => {
                self.feeder = None;
                self.keep_alive = false;
            }
        }
    }
}

fn put_trailers(wbuf: &mut BytesMut, trailers: &HeaderMap) {
    for (name, value) in trailers {
        wbuf.extend_from_slice(name.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(value.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
}

/// A refusal before any request reached the service: a short plain-text answer, then close.
async fn write_error<W: AsyncWrite + Unpin>(
    writer: &mut W,
    wbuf: &mut BytesMut,
    status: StatusCode,
    message: &'static str,
) -> std::io::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    with_date(|date| {
        encode_response_head(
            wbuf,
            status,
            &headers,
            ResponseFraming::Length(message.len() as u64),
            Persistence::Close,
            date,
        )
    });
    wbuf.extend_from_slice(message.as_bytes());
    writer.write_all(wbuf).await?;
    wbuf.clear();
    let _ = writer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use http_body_util::{Full, StreamBody};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        max_head: 8 * 1024,
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
    };

    /// Answers "METHOD PATH BODY", or 500 with the body's error.
    async fn echo(req: Request<RequestBody>) -> Response<Full<Bytes>> {
        let line = format!("{} {}", req.method(), req.uri().path());
        match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(Bytes::from(format!(
                "{line} {}",
                String::from_utf8_lossy(&body.to_bytes())
            )))),
            Err(e) => {
                let mut response = Response::new(Full::new(Bytes::from(e.to_string())));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        }
    }

    /// Send `input` to [`echo`], close the sending side, and read everything until weir closes.
    async fn exchange(input: &[u8]) -> String {
        exchange_with(echo, input, true).await
    }

    /// Send `input` to `service` (then close the sending side if `close`), and read
    /// everything until weir closes.
    async fn exchange_with<S, F, B>(service: S, input: &[u8], close: bool) -> String
    where
        S: FnMut(Request<RequestBody>) -> F + Send + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Display + Send,
    {
        let (mut client, served, _shutdown) = connect(service, b"");
        client.write_all(input).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A connection served in memory: the client's end, the driver's task, and the switch
    /// that shuts it down. `read` is what the driver has already read (the sniffed bytes).
    fn connect<S, F, B>(
        service: S,
        read: &[u8],
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<std::io::Result<()>>,
        watch::Sender<bool>,
    )
    where
        S: FnMut(Request<RequestBody>) -> F + Send + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Display + Send,
    {
        let (client, server) = duplex(64 * 1024);
        let (shutdown, watching) = watch::channel(false);
        let served = tokio::spawn(serve(
            server,
            BytesMut::from(read),
            LIMITS,
            watching,
            service,
        ));
        (client, served, shutdown)
    }

    fn bodies(out: &str) -> Vec<&str> {
        out.split("HTTP/1.1 ")
            .filter(|r| !r.is_empty())
            .map(|r| r.split_once("\r\n\r\n").map_or("", |(_, body)| body))
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_with_their_bodies() {
        let out = exchange(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            bodies(&out),
            vec!["GET /a ", "POST /b hello", "POST /c abcde"],
            "{out}"
        );
        assert_eq!(out.matches("content-length: ").count(), 3, "{out}");
        assert_eq!(out.matches("date: ").count(), 3, "{out}");
        assert!(!out.contains("connection: close"), "{out}");
    }

    #[tokio::test]
    async fn refusals_answer_and_close() {
        let out = exchange(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(
            out.contains("connection: close\r\n") && !out.contains("/next"),
            "{out}"
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(exchange(big.as_bytes()).await.starts_with("HTTP/1.1 431 "));
        let gzip =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        assert!(exchange(gzip).await.starts_with("HTTP/1.1 501 "));
    }

    #[tokio::test]
    async fn expect_continue_gets_a_100_before_the_body() {
        let out = exchange(
            b"POST /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert!(out.ends_with("POST /u hi"), "{out}");
    }

    #[tokio::test]
    async fn head_answers_carry_no_body() {
        let out =
            exchange(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
        assert_eq!(bodies(&out), vec!["", "GET /g "], "{out}");
    }

    #[tokio::test]
    async fn streamed_bodies_are_chunked_for_http11_and_end_with_the_connection_for_http10() {
        async fn streamed(
            _: Request<RequestBody>,
        ) -> Response<
            StreamBody<
                futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
            >,
        > {
            let frames = vec![
                Ok(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(Bytes::from_static(b"world"))),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)))
        }
        for (request, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            ),
            (
                &b"GET / HTTP/1.0\r\n\r\n"[..],
                "connection: close\r\n\r\nhello world",
            ),
        ] {
            let out = exchange_with(streamed, request, true).await;
            assert!(out.ends_with(want), "{out}");
        }
    }

    #[tokio::test]
    async fn a_body_cut_off_is_an_error_to_the_service_never_a_short_body() {
        let out = exchange(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
        assert!(out.contains("connection: close"), "{out}");
        assert!(
            out.ends_with("the client closed the connection mid-body"),
            "{out}"
        );
        let out =
            exchange(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .await;
        assert!(out.ends_with("malformed chunked body"), "{out}");
    }

    #[tokio::test]
    async fn an_unread_body_still_coming_closes_the_connection_after_the_answer() {
        async fn ignore(_: Request<RequestBody>) -> Response<Full<Bytes>> {
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
        let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc";
        let out = exchange_with(ignore, request, false).await;
        assert!(
            out.contains("connection: close\r\n") && out.ends_with("ok"),
            "{out}"
        );
        // A body already buffered whole is discarded and the connection goes on.
        let out = exchange(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /n HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(bodies(&out).len(), 2, "{out}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_gets_408_and_an_idle_connection_is_closed() {
        let (mut client, served, _shutdown) = connect(echo, b"");
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));

        let (mut client, served, _shutdown) = connect(echo, b"");
        let started = Instant::now();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(out.is_empty());
        assert_eq!(started.elapsed(), LIMITS.header_read_timeout);
    }

    #[tokio::test]
    async fn http10_keep_alive_is_announced_and_trailers_reach_the_service() {
        async fn trailers(req: Request<RequestBody>) -> Response<Full<Bytes>> {
            let collected = req.into_body().collect().await.unwrap();
            let sum = collected
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            Response::new(Full::new(Bytes::from(sum)))
        }
        let out = exchange_with(
            trailers,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-sum: 1\r\n\r\n\
              GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            true,
        )
        .await;
        assert!(out.contains("connection: keep-alive\r\n"), "{out}");
        assert_eq!(bodies(&out), vec!["1", ""], "{out}");
    }

    #[tokio::test]
    async fn a_body_still_read_after_an_early_answer_is_read_to_its_end_and_the_connection_goes_on()
    {
        // The answer comes before the body; the body is still being read elsewhere.
        async fn early(req: Request<RequestBody>) -> Response<Full<Bytes>> {
            let body = req.into_body();
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            Response::new(Full::new(Bytes::from_static(b"early")))
        }
        let (mut client, served, _shutdown) = connect(early, b"");
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            first.ends_with("early") && !first.contains("close"),
            "{first}"
        );
        client
            .write_all(b"defGET /n HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&rest).ends_with("early"));
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_its_answer_is_pending_drops_the_service() {
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        let never = move |_: Request<RequestBody>| {
            let guard = dropped_tx.take();
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Response::new(Full::new(Bytes::new()))
            }
        };
        let (mut client, served, _shutdown) = connect(never, b"");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        // The sender inside the service future is dropped with it.
        assert!(dropped_rx.await.is_err());
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_an_idle_connection_and_ends_a_busy_one_after_its_answer() {
        let (mut client, served, shutdown) = connect(echo, b"");
        shutdown.send(true).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(out.is_empty());

        // Shutdown comes once a pipelined pair has been read: the first is answered, with
        // `connection: close`, and the second is not.
        let read = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut client, served, shutdown) = connect(echo, read);
        shutdown.send(true).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.contains("connection: close\r\n") && out.ends_with("GET /1 "),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_101_hands_the_connection_and_the_bytes_read_past_the_head_to_the_upgrade() {
        async fn switch(mut req: Request<RequestBody>) -> Response<Full<Bytes>> {
            let pending = req.extensions_mut().remove::<PendingUpgrade>().unwrap();
            tokio::spawn(async move {
                let Upgraded { mut io, read_ahead } = pending.wait().await.unwrap();
                io.write_all(b"tunnel got: ").await.unwrap();
                io.write_all(&read_ahead).await.unwrap();
                let mut more = [0u8; 5];
                io.read_exact(&mut more).await.unwrap();
                io.write_all(&more).await.unwrap();
            });
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("echo"));
            response
        }
        let (mut client, served, _shutdown) = connect(switch, b"");
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly",
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).ends_with("tunnel got: early") {
            let mut buf = [0u8; 256];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        client.write_all(b"later").await.unwrap();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\n"),
            "{out}"
        );
        assert!(out.contains("connection: upgrade\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\ntunnel got: earlylater"), "{out}");
    }
}
