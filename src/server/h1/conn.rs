//! One HTTP/1.1 client connection served through weir's own codec: read a head into the
//! connection's buffer, hand the request to the service with a body fed from that same buffer,
//! write the response head and as much of its body as is ready in one write, and go on with
//! the next request (pipelined ones in order). Between requests an empty read buffer is given
//! back, so an idle keep-alive connection holds no buffer; the head timer is one per
//! connection, reset for each request.
//!
//! Not yet wired into the listeners (hyper serves them today): this is the driver the proxy
//! moves onto next, tested here against in-memory streams.

use std::fmt::Display;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::date::with_date;
use super::encode::{encode_response_head, put_chunk_size, ResponseFraming};
use super::head::{parse_request_head, HeadError, RequestFraming, RequestHead};
use crate::upstream::{BodyDecoder, Decoded, Framing};

/// Read more when less than this much room is left in the read buffer.
const READ_RESERVE: usize = 4 * 1024;
/// Write what has gathered once it reaches this size, even if more body is ready.
const WRITE_HIGH_WATER: usize = 16 * 1024;

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
    chunks: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    hint: SizeHint,
}

impl RequestBody {
    fn empty() -> Self {
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
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
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

/// Feeds one request's body from the read buffer to its [`RequestBody`].
struct Feeder {
    decoder: BodyDecoder,
    chunks: mpsc::Sender<Result<Bytes, BodyError>>,
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

/// Serve requests on `io` with `service` until the client or a response ends the connection.
pub async fn serve<IO, S, F, B>(io: IO, limits: Limits, mut service: S) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite,
    S: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    loop {
        timer
            .as_mut()
            .reset(Instant::now() + limits.header_read_timeout);
        let head = match read_head(&mut reader, &mut rbuf, &limits, timer.as_mut()).await? {
            HeadRead::Head(head) => head,
            HeadRead::Closed => return Ok(()),
            HeadRead::Refused(status, message) => {
                write_error(&mut writer, &mut wbuf, status, message).await?;
                return Ok(());
            }
        };
        let RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        let (body, mut feeder) = match framing {
            RequestFraming::Empty => (RequestBody::empty(), None),
            RequestFraming::Length(n) => body_channel(Framing::Length(n), SizeHint::with_exact(n)),
            RequestFraming::Chunked => body_channel(Framing::Chunked, SizeHint::default()),
        };
        if expect_continue && feeder.is_some() {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let request = Request::from_parts(parts, body);
        let mut answer = pin!(service(request));
        let mut side = RequestSide {
            feeder: feeder.take(),
            reader: &mut reader,
            rbuf: &mut rbuf,
            limits: &limits,
            keep_alive,
        };

        // Until the response head: feed the body while the service works.
        let response = loop {
            if side.feeder.is_none() {
                break answer.as_mut().await;
            }
            tokio::select! {
                biased;
                response = answer.as_mut() => break response,
                fed = feed(side.feeder.as_mut(), side.reader, side.rbuf, side.limits) => side.fed(fed?),
            }
        };

        let (mut parts, body) = response.into_parts();
        let mut body = pin!(body);
        let bodiless = method == Method::HEAD
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let response_framing = if bodiless {
            ResponseFraming::Bodiless
        } else if let Some(n) = body.size_hint().exact() {
            ResponseFraming::Length(n)
        } else if version == Version::HTTP_11 {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        };
        if response_framing == ResponseFraming::UntilClose
            || parts.headers.get(header::CONNECTION).is_some_and(is_close)
        {
            side.keep_alive = false;
        }
        // Whether the connection can go on must be known for the head: it can if the request
        // body is complete, or if the rest of it is already buffered (read and discarded);
        // otherwise it ends with this response rather than wait for bytes nobody wants.
        if let Some(f) = side.feeder.as_mut() {
            if f.chunks.is_closed() && drain_buffered(f, side.rbuf) {
                side.feeder = None;
            } else if f.chunks.is_closed() {
                side.keep_alive = false;
            }
        }
        let close_after = !side.keep_alive || side.feeder.is_some();
        parts.headers.remove(header::CONNECTION);
        with_date(|date| {
            encode_response_head(
                &mut wbuf,
                parts.status,
                &parts.headers,
                response_framing,
                close_after,
                date,
            )
        });
        if !bodiless {
            write_body(
                &mut writer,
                &mut wbuf,
                &mut body,
                response_framing,
                &mut side,
            )
            .await?;
        }
        if !wbuf.is_empty() {
            writer.write_all(&wbuf).await?;
            wbuf.clear();
        }
        writer.flush().await?;
        if close_after {
            if let Some(f) = side.feeder.take() {
                // Never let a cut-off body end as if complete.
                let _ = f.chunks.try_send(Err(BodyError::Incomplete));
            }
            let _ = writer.shutdown().await;
            return Ok(());
        }
        // Idle until the next request: give back buffers that hold nothing.
        if rbuf.is_empty() {
            rbuf = BytesMut::new();
        }
        wbuf = BytesMut::new();
    }
}

fn is_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

fn body_channel(framing: Framing, hint: SizeHint) -> (RequestBody, Option<Feeder>) {
    let (tx, rx) = mpsc::channel(2);
    let body = RequestBody {
        chunks: Some(rx),
        hint,
    };
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

async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    limits: &Limits,
    mut timer: Pin<&mut Sleep>,
) -> std::io::Result<HeadRead> {
    loop {
        match parse_request_head(rbuf, limits.max_head) {
            Ok(Some(head)) => return Ok(HeadRead::Head(head)),
            Ok(None) => {}
            Err(e @ HeadError::Malformed(_))
            | Err(e @ HeadError::TooLarge)
            | Err(e @ HeadError::UnsupportedCoding)
            | Err(e @ HeadError::Expectation) => {
                return Ok(HeadRead::Refused(e.status(), e.client_message()))
            }
        }
        if rbuf.capacity() - rbuf.len() < READ_RESERVE / 4 {
            rbuf.reserve(READ_RESERVE);
        }
        tokio::select! {
            read = reader.read_buf(rbuf) => {
                if read? == 0 {
                    // A close between requests is the normal end; mid-head, nothing to answer.
                    return Ok(HeadRead::Closed);
                }
            }
            () = timer.as_mut() => {
                return Ok(if rbuf.is_empty() {
                    HeadRead::Closed
                } else {
                    HeadRead::Refused(StatusCode::REQUEST_TIMEOUT, "weir: request head timed out\n")
                });
            }
        }
    }
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
                slot.send(Ok(data));
            }
            Ok(Fed::More)
        }
        Ok(Decoded::Trailers(_)) | Ok(Decoded::Done) => Ok(Fed::Done),
        Ok(Decoded::NeedMore) => {
            if rbuf.capacity() - rbuf.len() < READ_RESERVE / 4 {
                rbuf.reserve(READ_RESERVE);
            }
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
async fn write_body<W, R, B>(
    writer: &mut W,
    wbuf: &mut BytesMut,
    body: &mut B,
    framing: ResponseFraming,
    request: &mut RequestSide<'_, R>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
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
                    writer.write_all(wbuf).await?;
                    wbuf.clear();
                }
                loop {
                    if request.feeder.is_none() {
                        break body.frame().await;
                    }
                    tokio::select! {
                        biased;
                        next = body.frame() => break next,
                        fed = feed(request.feeder.as_mut(), request.reader, request.rbuf, request.limits) => {
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
            writer.write_all(wbuf).await?;
            wbuf.clear();
        }
    }
}

/// The request side of the connection while its response is written.
struct RequestSide<'a, R> {
    feeder: Option<Feeder>,
    reader: &'a mut R,
    rbuf: &'a mut BytesMut,
    limits: &'a Limits,
    keep_alive: bool,
}

impl<R> RequestSide<'_, R> {
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
            true,
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
        let (mut client, server) = duplex(64 * 1024);
        let served = tokio::spawn(serve(server, LIMITS, service));
        client.write_all(input).await.unwrap();
        if close {
            client.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        String::from_utf8_lossy(&out).into_owned()
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
        let (mut client, server) = duplex(64 * 1024);
        let served = tokio::spawn(serve(server, LIMITS, echo));
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));

        let (mut client, server) = duplex(64 * 1024);
        let served = tokio::spawn(serve(server, LIMITS, echo));
        let started = Instant::now();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        assert!(out.is_empty());
        assert_eq!(started.elapsed(), LIMITS.header_read_timeout);
    }
}
