//! Reading a worker's HTTP/1.1 response: the head (parsed by httparse, header values kept as
//! slices of the read buffer, no copies) and the body framing of RFC 9112 §6.3, with the body
//! decoders for Content-Length, chunked and read-until-close bodies.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::values::field_spans::{self, FieldSpan};
use crate::values::lines::{find_line_end, split_field_line, LineError, SectionScan};

/// Most header fields a worker response may carry (hyper's default, too).
pub const MAX_HEADERS: usize = 100;
/// Largest response head (status line + fields) weir buffers; beyond it the response is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a worker's response cannot be passed on. Each maps to a 502 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not an HTTP/1.x response head.
    Head,
    /// The head is larger than `MAX_HEAD_BYTES` (64 KiB) or has more than `MAX_HEADERS` (100)
    /// fields.
    HeadTooLarge,
    /// Content-Length is not a number, or its copies disagree.
    ContentLength,
    /// A malformed chunk size line, chunk end or trailer section.
    Chunked,
    /// A transfer coding other than `chunked` alone: weir would pass on coded bytes the client
    /// has no `Content-Encoding` for.
    TransferCoding,
}

impl DecodeError {
    /// The short body sent to the client.
    pub fn client_message(self) -> &'static str {
        match self {
            DecodeError::Head => "weir: the worker sent an invalid response\n",
            DecodeError::HeadTooLarge => "weir: the worker's response head is too large\n",
            DecodeError::ContentLength => "weir: the worker sent an invalid Content-Length\n",
            DecodeError::Chunked => "weir: the worker sent a malformed chunked body\n",
            DecodeError::TransferCoding => {
                "weir: the worker sent a transfer coding other than chunked\n"
            }
        }
    }
}

/// How the body after a response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request, 204 or 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the worker closes the connection.
    UntilClose,
    /// 101 Switching Protocols: the connection now carries another protocol.
    Upgrade,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and header fields (hop-by-hop fields still included).
    pub parts: http::response::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once this response is read.
    pub keep_alive: bool,
}

/// Parse a response head from the front of `buf`, consuming it. Informational responses (1xx
/// other than 101) are consumed and skipped, as a client must. `Ok(None)` means more bytes are
/// needed; `scan` carries the search for the head's end to the next call (one per
/// connection), so a head that arrives in many reads is looked at once.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    scan: &mut SectionScan,
) -> Result<Option<ResponseHead>, DecodeError> {
    // Most responses have a handful of fields: try with room for 32 (two small arrays to set
    // up per response), and only a head with more pays for the full 100.
    match parse_head_with::<COMMON_HEADERS>(buf, method, scan) {
        Err(DecodeError::HeadTooLarge) => {
            *scan = SectionScan::new();
            parse_head_with::<MAX_HEADERS>(buf, method, scan)
        }
        other => other,
    }
}

/// Field slots tried first when parsing a response head.
const COMMON_HEADERS: usize = 32;

fn parse_head_with<const N: usize>(
    buf: &mut BytesMut,
    method: &Method,
    scan: &mut SectionScan,
) -> Result<Option<ResponseHead>, DecodeError> {
    loop {
        // The head's end is found by the one line rule (CRLF only), and httparse reads
        // exactly that much: the two never disagree on where the body starts.
        let head_len = match scan.advance(buf, MAX_HEAD_BYTES) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(LineError::TooLong) => return Err(DecodeError::HeadTooLarge),
            Err(_) => return Err(DecodeError::Head),
        };
        let mut fields = [httparse::EMPTY_HEADER; N];
        let mut spans = [FieldSpan::default(); N];
        let mut parsed = httparse::Response::new(&mut fields);
        match parsed.parse(&buf[..head_len]) {
            Ok(httparse::Status::Complete(len)) if len == head_len => {}
            Err(httparse::Error::TooManyHeaders) => return Err(DecodeError::HeadTooLarge),
            _ => return Err(DecodeError::Head),
        }
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| DecodeError::Head)?;
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: not the response; read on.
            buf.advance(head_len);
            continue;
        }
        // Remember where each field lies, so the values can be slices of the frozen head.
        let count = field_spans::record(&mut spans, parsed.headers, buf.as_ptr() as usize);
        let head = buf.split_to(head_len).freeze();
        let headers = field_spans::header_map(&head, &spans[..count]).ok_or(DecodeError::Head)?;
        let (framing, framing_keeps_alive) = framing(status, method, &headers)?;
        let keep_alive =
            framing_keeps_alive && crate::values::connection::persists(version, &headers);
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let (parts, ()) = response.into_parts();
        return Ok(Some(ResponseHead {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// The body framing (RFC 9112 §6.3), and whether it lets the connection be reused.
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(Framing, bool), DecodeError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Upgrade, false));
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // `chunked` alone: any other coding (gzip, deflate, identity) would reach the client
        // as coded bytes with nothing saying so, once weir drops the hop-by-hop field.
        if chunked_alone(headers) != Some(true) {
            return Err(DecodeError::TransferCoding);
        }
        // Transfer-Encoding overrides Content-Length; a response with both is suspect, so its
        // connection is not reused (RFC 9112 §6.3, point 3).
        let clean = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok((Framing::Chunked, clean));
    }
    match content_length(headers)? {
        Some(0) => Ok((Framing::Empty, true)),
        Some(n) => Ok((Framing::Length(n), true)),
        None => Ok((Framing::UntilClose, false)),
    }
}

/// Whether a message's transfer codings (every `Transfer-Encoding` field and list item
/// together) are `chunked` alone; `None` when it names no coding at all. weir decodes chunks
/// and frames a body afresh on the other side, so any other coding would be dropped on the
/// way.
pub fn chunked_alone(headers: &HeaderMap) -> Option<bool> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty());
    let first = codings.next()?;
    Some(first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none())
}

/// The Content-Length, when present: every copy (and every item of a list) must agree.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, DecodeError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| DecodeError::ContentLength)?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(DecodeError::ContentLength);
            }
            let n: u64 = item.parse().map_err(|_| DecodeError::ContentLength)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(DecodeError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// What the body decoder produced from the buffered bytes.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes (a slice of the read buffer, not a copy).
    Data(Bytes),
    /// The trailer section of a chunked body.
    Trailers(HeaderMap),
    /// The body is complete.
    Done,
    /// More bytes must be read first.
    NeedMore,
}

/// Incremental body decoder: feed it the read buffer after every read.
#[derive(Debug)]
pub enum BodyDecoder {
    /// This many bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(ChunkState),
    /// Until the connection closes; `true` once it has.
    UntilClose(bool),
    /// Finished.
    Done,
}

/// Where a chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

impl BodyDecoder {
    /// The decoder for a head's framing.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Upgrade | Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::Chunked(ChunkState::Size),
            Framing::UntilClose => BodyDecoder::UntilClose(false),
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// Bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }

    /// The peer closed the connection: true when that ends the body (a read-until-close
    /// body, or one already complete), false for any other unfinished body.
    pub fn eof(&mut self) -> bool {
        match self {
            BodyDecoder::UntilClose(closed) => {
                *closed = true;
                true
            }
            BodyDecoder::Done => true,
            _ => false,
        }
    }

    /// Take the next piece of the body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(Decoded::Done),
                BodyDecoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        *self = BodyDecoder::Done;
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                BodyDecoder::UntilClose(closed) => {
                    if !buf.is_empty() {
                        return Ok(Decoded::Data(buf.split().freeze()));
                    }
                    if *closed {
                        *self = BodyDecoder::Done;
                        continue;
                    }
                    return Ok(Decoded::NeedMore);
                }
                BodyDecoder::Chunked(state) => match step_chunked(state, buf)? {
                    Some(Decoded::Done) => *self = BodyDecoder::Done,
                    Some(Decoded::Trailers(trailers)) => {
                        // The trailer section included the closing empty line.
                        *self = BodyDecoder::Done;
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Some(decoded) => return Ok(decoded),
                    None => continue,
                },
            }
        }
    }
}

/// One step of the chunked decoder: `Ok(None)` means the state moved and decoding goes on.
fn step_chunked(
    state: &mut ChunkState,
    buf: &mut BytesMut,
) -> Result<Option<Decoded>, DecodeError> {
    match *state {
        ChunkState::Size => {
            let Some(line_end) =
                find_line_end(buf, 0, MAX_CHUNK_LINE).map_err(|_| DecodeError::Chunked)?
            else {
                return Ok(Some(Decoded::NeedMore));
            };
            let size = chunk_size(&buf[..line_end])?;
            buf.advance(line_end + 2);
            *state = if size == 0 {
                ChunkState::Trailers
            } else {
                ChunkState::Data(size)
            };
            Ok(None)
        }
        ChunkState::Data(left) => {
            if buf.is_empty() {
                return Ok(Some(Decoded::NeedMore));
            }
            let take = left.min(buf.len() as u64) as usize;
            *state = if left == take as u64 {
                ChunkState::DataEnd
            } else {
                ChunkState::Data(left - take as u64)
            };
            Ok(Some(Decoded::Data(buf.split_to(take).freeze())))
        }
        ChunkState::DataEnd => {
            if buf.len() < 2 {
                return Ok(Some(Decoded::NeedMore));
            }
            if &buf[..2] != b"\r\n" {
                return Err(DecodeError::Chunked);
            }
            buf.advance(2);
            *state = ChunkState::Size;
            Ok(None)
        }
        ChunkState::Trailers => {
            // Searched from the start each time: a trailer section is small and rare.
            let Some(end) = SectionScan::new()
                .advance(buf, MAX_TRAILER_BYTES)
                .map_err(|_| DecodeError::Chunked)?
            else {
                return Ok(Some(Decoded::NeedMore));
            };
            let section = buf.split_to(end).freeze();
            if end == 2 {
                return Ok(Some(Decoded::Done));
            }
            Ok(Some(Decoded::Trailers(parse_trailers(&section)?)))
        }
    }
}

/// The fields of a trailer section whose end the line rule found (so every line in it ends
/// with CRLF, the last one empty), read line by line by the same rule.
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, DecodeError> {
    let mut trailers = HeaderMap::new();
    let mut start = 0;
    while let Ok(Some(end)) = find_line_end(section, start, MAX_TRAILER_BYTES) {
        if end == start {
            return Ok(trailers);
        }
        if trailers.len() >= MAX_HEADERS {
            return Err(DecodeError::Chunked);
        }
        let (name, value) = split_field_line(&section[start..end]).ok_or(DecodeError::Chunked)?;
        let name = HeaderName::from_bytes(name).map_err(|_| DecodeError::Chunked)?;
        let value = HeaderValue::from_maybe_shared(section.slice_ref(value))
            .map_err(|_| DecodeError::Chunked)?;
        trailers.append(name, value);
        start = end + 2;
    }
    Err(DecodeError::Chunked)
}

/// The size on a chunk-size line (hex digits, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(DecodeError::Chunked);
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(DecodeError::Chunked);
    }
    let text = std::str::from_utf8(digits).map_err(|_| DecodeError::Chunked)?;
    u64::from_str_radix(text, 16).map_err(|_| DecodeError::Chunked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Option<ResponseHead>, DecodeError> {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf, &method, &mut SectionScan::new())
    }

    fn body_of(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), DecodeError> {
        // Feed one byte at a time: every split point must decode the same.
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::Done => return Ok((body, trailers)),
                Decoded::NeedMore => {
                    if fed == wire.len() {
                        if !decoder.eof() {
                            return Err(DecodeError::Chunked);
                        }
                        continue;
                    }
                    buf.extend_from_slice(&wire[fed..fed + 1]);
                    fed += 1;
                }
            }
        }
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let head = parse_head(&mut buf, &Method::GET, &mut SectionScan::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.parts.headers["x-a"], "b");
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn partial_head_needs_more_and_huge_head_is_refused() {
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            head(&huge, Method::GET).unwrap_err(),
            DecodeError::HeadTooLarge
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            head(&text, Method::GET).unwrap_err(),
            DecodeError::HeadTooLarge
        );
        assert_eq!(
            head("SSH-2.0-OpenSSH\r\n\r\n", Method::GET).unwrap_err(),
            DecodeError::Head
        );
    }

    #[test]
    fn a_head_with_more_fields_than_the_first_try_parses() {
        let fields: String = (0..COMMON_HEADERS + 8)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .collect();
        let text = format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n{fields}\r\n");
        let head = head(&text, Method::GET).unwrap().unwrap();
        assert_eq!(head.parts.headers.len(), COMMON_HEADERS + 8);
        assert_eq!(head.parts.headers["x-39"], "39");
    }

    #[test]
    fn informational_responses_are_skipped() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                    HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let head = head(text, Method::POST).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::CREATED);
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |text: &str, method: Method| {
            head(text, method).map(|h| h.map(|h| (h.framing, h.keep_alive)))
        };
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD).unwrap(),
            Some((Framing::Empty, true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Empty, true))
        );
        for coded in [
            "gzip, chunked",
            "gzip",
            "chunked, chunked",
            "identity",
            "chunked, gzip",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coded}\r\n\r\n");
            assert_eq!(
                f(&text, Method::GET).unwrap_err(),
                DecodeError::TransferCoding,
                "{coded}"
            );
        }
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Chunked, false))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", Method::GET).unwrap(),
            Some((Framing::UntilClose, false))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nConnection: close\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Length(4), false))
        );
        assert_eq!(
            f("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n", Method::GET).unwrap(),
            Some((Framing::Length(4), false))
        );
        assert_eq!(
            f(
                "HTTP/1.0 200 OK\r\nContent-Length: 4\r\nConnection: Keep-Alive\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Length(4), true))
        );
        assert_eq!(
            f(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Method::GET
            )
            .unwrap(),
            Some((Framing::Upgrade, false))
        );
        for bad in ["4, 5", "-1", "+4", "0x10", ""] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(
                f(&text, Method::GET).unwrap_err(),
                DecodeError::ContentLength,
                "{bad}"
            );
        }
    }

    #[test]
    fn length_body() {
        let (body, _) = body_of(Framing::Length(5), b"hello").unwrap();
        assert_eq!(body, b"hello");
        assert!(body_of(Framing::Length(6), b"hello").is_err());
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let wire = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 7\r\n\r\n";
        let (body, trailers) = body_of(Framing::Chunked, wire).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "7");
        let (body, trailers) = body_of(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"0123456789");
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhel",
            // One rule for where a line ends: CRLF, in sizes, extensions and trailers alike.
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5;a=\nb\r\nhello\r\n0\r\n\r\n",
            b"5;a=\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a=\0b\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\r\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            b"5\r\nhello\r\n0\r\nX : 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\n X: 1\r\n\r\n",
        ] {
            assert!(body_of(Framing::Chunked, wire).is_err(), "{wire:?}");
        }
        let long_line = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE + 8]].concat();
        assert!(body_of(Framing::Chunked, &long_line).is_err());
    }

    #[test]
    fn a_trailer_section_is_read_by_the_rule_that_ends_it_and_leaves_the_next_message() {
        let wire = b"0\r\nX-A: 1\r\nX-B:2 \r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&wire[..]);
        let Ok(Decoded::Trailers(trailers)) = decoder.decode(&mut buf) else {
            panic!("trailers");
        };
        assert_eq!(trailers["x-a"], "1");
        assert_eq!(trailers["x-b"], "2");
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn until_close_body_ends_at_eof() {
        let (body, _) = body_of(Framing::UntilClose, b"all of it").unwrap();
        assert_eq!(body, b"all of it");
    }
}
