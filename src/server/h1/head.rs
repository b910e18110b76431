//! Reading a client's HTTP/1.1 request head: httparse into slices of the read buffer (values
//! are shared slices of the frozen head, never copies), then the framing rules of RFC 9112 §6
//! applied strictly, so a request is either refused or framed one way only. Every refusal
//! names its status: 431 for a head too large or with too many fields, 501 for a transfer
//! coding weir cannot pass on, 417 for an expectation it cannot meet, 400 for the rest.

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, Version};

use crate::values::field_spans::{self, FieldSpan};
use crate::values::lines::{is_token_byte, LineError, SectionScan};

/// Most header fields a request may carry.
pub const MAX_FIELDS: usize = 100;
/// Field slots tried first: most requests have a handful, and only a head with more pays for
/// the full array.
const COMMON_FIELDS: usize = 32;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (no Content-Length, no Transfer-Encoding, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields (hop-by-hop ones included: the proxy strips them).
    pub parts: http::request::Parts,
    /// How the body is delimited.
    pub framing: RequestFraming,
    /// Whether the connection may carry another request after this one: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `keep-alive`, and never after a message framed
    /// with both Transfer-Encoding and Content-Length (RFC 9112 §6.1).
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending its body.
    pub expect_continue: bool,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than the limit, or more than [`MAX_FIELDS`] fields: 431.
    TooLarge,
    /// A transfer coding besides `chunked` alone: 501.
    UnsupportedCoding,
    /// An `Expect` other than `100-continue`: 417.
    Expectation,
    /// Malformed: 400, with the short reason the client gets.
    Malformed(&'static str),
}

impl HeadError {
    /// A head whose lines break [`crate::values::lines`]'s rule.
    fn from_line(e: LineError) -> Self {
        HeadError::Malformed(match e {
            LineError::BareLf => "weir: malformed request head (a line ended with a bare LF)\n",
            LineError::BareCr => "weir: malformed request head (a bare CR)\n",
            LineError::Control => "weir: malformed request head (a control character)\n",
            LineError::TooLong => "weir: request head too large\n",
        })
    }

    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            HeadError::Expectation => StatusCode::EXPECTATION_FAILED,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The short body the client gets.
    pub fn client_message(self) -> &'static str {
        match self {
            HeadError::TooLarge => "weir: request head too large\n",
            HeadError::UnsupportedCoding => "weir: only the chunked transfer coding is supported\n",
            HeadError::Expectation => "weir: only Expect: 100-continue is supported\n",
            HeadError::Malformed(why) => why,
        }
    }
}

/// Parse a request head from the front of `buf`, consuming it; `Ok(None)` means more bytes
/// are needed. `scan` carries the search for the head's end from one call to the next (a new
/// one per head), so each byte is looked at once however the head arrives; httparse runs once,
/// on the whole head. Empty lines before a request are skipped (RFC 9112 §2.2). `max_head`
/// bounds the head, complete or not. Every line must end with CRLF (see
/// [`crate::values::lines`]).
pub fn parse_request_head(
    buf: &mut BytesMut,
    max_head: usize,
    scan: &mut SectionScan,
) -> Result<Option<RequestHead>, HeadError> {
    if scan.is_fresh() {
        let leading = buf
            .chunks_exact(2)
            .take_while(|pair| *pair == b"\r\n")
            .count()
            * 2;
        if leading > 0 {
            let _ = buf.split_to(leading);
        }
    }
    let head_len = match scan.advance(buf, max_head) {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(LineError::TooLong) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::from_line(e)),
    };
    match parse_with::<COMMON_FIELDS>(buf, head_len) {
        Err(HeadError::TooLarge) => parse_with::<MAX_FIELDS>(buf, head_len),
        other => other,
    }
    .map(Some)
}

/// Parse the whole head `buf[..head_len]` (its end already found) with room for `N` fields.
fn parse_with<const N: usize>(
    buf: &mut BytesMut,
    head_len: usize,
) -> Result<RequestHead, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; N];
    let mut spans = [FieldSpan::default(); N];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(len)) if len == head_len => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("weir: unsupported HTTP version\n"))
        }
        _ => return Err(HeadError::Malformed("weir: malformed request head\n")),
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("weir: malformed method\n"))?;
    let target = parsed.path.unwrap_or_default();
    let base = buf.as_ptr() as usize;
    let target_span = field_spans::span_of(target.as_bytes(), base);
    let count = field_spans::record(&mut spans, parsed.headers, base);
    let head = buf.split_to(head_len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_span.0..target_span.1))
        .map_err(|_| HeadError::Malformed("weir: malformed request target\n"))?;
    check_target_form(&method, &uri)?;
    let headers = field_spans::header_map(&head, &spans[..count])
        .ok_or(HeadError::Malformed("weir: malformed header field\n"))?;
    let (framing, framing_keeps_alive) = framing(version, &headers)?;
    let expect_continue = version == Version::HTTP_11 && expectation(&headers)?;
    let keep_alive = framing_keeps_alive && crate::values::connection::persists(version, &headers);
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let (parts, ()) = request.into_parts();
    Ok(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// RFC 9112 §3.2: origin-form (`/path`) for most requests, absolute-form (`http://host/path`)
/// for any, authority-form only for CONNECT, asterisk-form only for OPTIONS.
fn check_target_form(method: &Method, uri: &Uri) -> Result<(), HeadError> {
    let bad = Err(HeadError::Malformed("weir: malformed request target\n"));
    if *method == Method::CONNECT {
        return if uri.authority().is_some() && uri.scheme().is_none() {
            Ok(())
        } else {
            bad
        };
    }
    if uri.scheme().is_some() {
        return match uri.scheme_str() {
            Some("http") | Some("https") if uri.authority().is_some() => Ok(()),
            _ => bad,
        };
    }
    match uri.path() {
        "*" if *method == Method::OPTIONS && uri.query().is_none() => Ok(()),
        p if p.starts_with('/') && uri.authority().is_none() => Ok(()),
        _ => bad,
    }
}

/// The body framing of a request (RFC 9112 §6.3) and whether it lets the connection persist.
fn framing(version: Version, headers: &HeaderMap) -> Result<(RequestFraming, bool), HeadError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            // An HTTP/1.0 recipient cannot be relied on to have framed it the same way.
            return Err(HeadError::Malformed(
                "weir: Transfer-Encoding in an HTTP/1.0 request\n",
            ));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|c| c.trim_ascii());
        let mut count = 0;
        let mut last_chunked = false;
        for coding in &mut codings {
            if coding.is_empty() {
                continue;
            }
            if !coding.iter().all(|b| is_token_byte(*b)) {
                return Err(HeadError::Malformed("weir: malformed Transfer-Encoding\n"));
            }
            count += 1;
            last_chunked = coding.eq_ignore_ascii_case(b"chunked");
        }
        if !last_chunked {
            // Not framed by chunks: the length cannot be told (RFC 9112 §6.3, point 4).
            return Err(HeadError::Malformed(
                "weir: the last transfer coding must be chunked\n",
            ));
        }
        if count > 1 {
            return Err(HeadError::UnsupportedCoding);
        }
        // Content-Length beside it is ignored, and the connection closes after the response.
        let clean = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok((RequestFraming::Chunked, clean));
    }
    match content_length(headers)? {
        None | Some(0) => Ok((RequestFraming::Empty, true)),
        Some(n) => Ok((RequestFraming::Length(n), true)),
    }
}

/// The Content-Length, when present: digits only, every copy (and every list item) the same.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let bad = HeadError::Malformed("weir: invalid Content-Length\n");
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(bad);
            }
            let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|seen| seen != n) {
                return Err(bad);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `Expect: 100-continue` (case-insensitive) is met by a 100 before the body; anything else
/// cannot be (RFC 9110 §10.1.1). Only asked of HTTP/1.1 requests: an HTTP/1.0 client cannot
/// know the expectation, so its Expect is ignored (RFC 9110 §10.1.1), never answered with a 100.
fn expectation(headers: &HeaderMap) -> Result<bool, HeadError> {
    let mut expect = false;
    for value in headers.get_all(header::EXPECT) {
        if value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            expect = true;
        } else {
            return Err(HeadError::Expectation);
        }
    }
    Ok(expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 16 * 1024;

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(&mut BytesMut::from(text), LIMIT, &mut SectionScan::new())
    }

    fn head(text: &str) -> RequestHead {
        parse(text).unwrap().unwrap()
    }

    fn refused(text: &str) -> StatusCode {
        parse(text).unwrap_err().status()
    }

    #[test]
    fn parses_a_head_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            "\r\nPOST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        );
        let head = parse_request_head(&mut buf, LIMIT, &mut SectionScan::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["x-a"], "b");
        assert_eq!(head.framing, RequestFraming::Length(5));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn partial_heads_wait_and_large_ones_are_431() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(LIMIT));
        assert_eq!(refused(&long), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..MAX_FIELDS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let fine: String = (0..MAX_FIELDS - 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\nHost: x\r\n{fine}\r\n"))
                .parts
                .headers
                .len(),
            MAX_FIELDS
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked = head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            (chunked.framing, chunked.keep_alive),
            (RequestFraming::Chunked, true)
        );
        let both = head(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: Chunked\r\n\r\n",
        );
        assert_eq!(
            (both.framing, both.keep_alive),
            (RequestFraming::Chunked, false),
            "framed by chunks, then closed"
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .framing,
            RequestFraming::Length(5)
        );
        assert_eq!(
            head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").framing,
            RequestFraming::Empty
        );
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 5, 6",
            "Content-Length: +5",
            "Content-Length: -5",
            "Content-Length: 0x5",
            "Content-Length: 99999999999999999999",
            "Content-Length: ",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked, identity",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            "Transfer-Encoding: \"chunked\"",
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: x\r\n{bad}\r\n\r\n");
            assert_eq!(refused(&text), StatusCode::BAD_REQUEST, "{bad}");
        }
        for unsupported in [
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, chunked",
        ] {
            let text = format!("POST / HTTP/1.1\r\nHost: x\r\n{unsupported}\r\n\r\n");
            assert_eq!(refused(&text), StatusCode::NOT_IMPLEMENTED, "{unsupported}");
        }
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn malformed_fields_and_targets_are_400() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\0c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET x HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET example.com:80 HTTP/1.1\r\n\r\n",
            "CONNECT / HTTP/1.1\r\n\r\n",
            "GET ftp://x/ HTTP/1.1\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(refused(bad), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert_eq!(head("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").parts.uri, "*");
        assert_eq!(
            head("CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")
                .parts
                .uri
                .authority()
                .map(|a| a.as_str()),
            Some("x:443")
        );
        let absolute = head("GET http://x/p?q HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(absolute.parts.uri.path_and_query().unwrap(), "/p?q");
    }

    #[test]
    fn connection_persistence_and_expectations() {
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            head("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n"),
            StatusCode::EXPECTATION_FAILED
        );
    }

    #[test]
    fn a_line_ends_at_crlf_and_nowhere_else() {
        for bad in [
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\rHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x0bc\r\n\r\n",
            "\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(refused(bad), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        // Empty lines (CRLF) before a request are still skipped.
        assert_eq!(
            head("\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n").parts.uri,
            "/a"
        );
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_searched_once() {
        let wire = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(8000)
        );
        let mut buf = BytesMut::new();
        let mut scan = SectionScan::new();
        let mut parsed = None;
        for byte in wire.bytes() {
            buf.extend_from_slice(&[byte]);
            if let Some(head) = parse_request_head(&mut buf, LIMIT, &mut scan).unwrap() {
                parsed = Some(head);
            }
        }
        assert_eq!(parsed.unwrap().parts.headers["x-big"].len(), 8000);
        assert!(buf.is_empty());
    }

    #[test]
    fn expect_in_an_http_1_0_request_is_ignored() {
        let head = head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!head.expect_continue);
        assert!(
            !parse("POST / HTTP/1.0\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap()
                .expect_continue
        );
    }
}
