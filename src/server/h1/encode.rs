//! Writing a response head to an HTTP/1.1 client straight into the connection's write buffer:
//! the status line, the fields as the proxy left them (hop-by-hop ones already gone), the body
//! framing the connection chose, and `connection: close` when the connection ends after it. A
//! small body can follow in the same buffer, so head and body leave in one write.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap};
use http::StatusCode;

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body by definition (a HEAD request, 1xx, 204, 304): the fields are sent as they are,
    /// a Content-Length describing the body a GET would get included (RFC 9110 §8.6).
    Bodiless,
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`, for a streamed body of unknown length.
    Chunked,
    /// Neither: the body ends when the connection closes (an HTTP/1.0 client, which cannot
    /// read chunks).
    UntilClose,
    /// A 101: no body, `connection: upgrade`, and the connection carries the new protocol.
    Switching,
}

/// What the connection does after a response, as its `Connection` field says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Stays open, as HTTP/1.1 does unless told otherwise: no field.
    KeepAlive,
    /// Stays open for an HTTP/1.0 client that asked: `connection: keep-alive`, without which
    /// it would take the connection for closed.
    KeepAliveAnnounced,
    /// Closes after this response: `connection: close`.
    Close,
}

/// Append the head of a response with `status` and `headers` to `out`. `date` is the
/// `Date` value (cached per second by the caller).
pub fn encode_response_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    after: Persistence,
    date: &[u8],
) {
    out.reserve(estimate(headers) + 96);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let keep_framing_fields = framing == ResponseFraming::Bodiless;
    let switching = framing == ResponseFraming::Switching;
    for (name, value) in headers {
        let framing_field = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        if (framing_field && !keep_framing_fields) || name == header::CONNECTION {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Length(n) => {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::Bodiless | ResponseFraming::UntilClose | ResponseFraming::Switching => {}
    }
    if switching {
        out.put_slice(b"connection: upgrade\r\n");
    } else if after == Persistence::Close || framing == ResponseFraming::UntilClose {
        out.put_slice(b"connection: close\r\n");
    } else if after == Persistence::KeepAliveAnnounced {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Append `n` in decimal without a formatter.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// Append the size line of a chunk of `len` bytes (hex and CRLF) without a formatter.
pub fn put_chunk_size(out: &mut BytesMut, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

/// The bytes of the header fields, so the head is written without growing the buffer twice.
fn estimate(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const DATE: &[u8] = b"Thu, 03 Dec 2026 08:00:00 GMT";

    fn encode(
        status: u16,
        fields: &[(&str, &str)],
        framing: ResponseFraming,
        close: bool,
    ) -> String {
        let mut headers = HeaderMap::new();
        for (n, v) in fields {
            headers.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        let status = StatusCode::from_u16(status).unwrap();
        let after = if close {
            Persistence::Close
        } else {
            Persistence::KeepAlive
        };
        encode_response_head(&mut out, status, &headers, framing, after, DATE);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn status_line_fields_date_and_length() {
        let head = encode(
            200,
            &[
                ("content-type", "text/plain"),
                ("content-length", "999"),
                ("x-a", "1"),
            ],
            ResponseFraming::Length(5),
            false,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-a: 1\r\n\
             date: Thu, 03 Dec 2026 08:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );
    }

    #[test]
    fn framing_and_close() {
        let chunked = encode(
            502,
            &[("transfer-encoding", "gzip")],
            ResponseFraming::Chunked,
            true,
        );
        assert!(
            chunked.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{chunked}"
        );
        assert!(chunked.contains("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"));
        assert!(!chunked.contains("gzip"));
        let until_close = encode(200, &[], ResponseFraming::UntilClose, false);
        assert!(
            until_close.ends_with("connection: close\r\n\r\n"),
            "{until_close}"
        );
        assert!(!until_close.contains("content-length") && !until_close.contains("chunked"));
        let mut out = BytesMut::new();
        let no_fields = HeaderMap::new();
        let framing = ResponseFraming::Length(0);
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &no_fields,
            framing,
            Persistence::KeepAliveAnnounced,
            DATE,
        );
        assert!(out.ends_with(b"content-length: 0\r\nconnection: keep-alive\r\n\r\n"));
        let head = encode(
            200,
            &[("content-length", "42"), ("connection", "keep-alive")],
            ResponseFraming::Bodiless,
            false,
        );
        assert!(
            head.contains("content-length: 42\r\n"),
            "a HEAD answer keeps the length: {head}"
        );
        assert!(
            !head.contains("connection"),
            "weir decides persistence: {head}"
        );
        let dated = encode(
            304,
            &[("date", "yesterday")],
            ResponseFraming::Bodiless,
            false,
        );
        assert_eq!(dated.matches("date:").count(), 1, "{dated}");
        let unknown = encode(599, &[], ResponseFraming::Length(0), false);
        assert!(unknown.starts_with("HTTP/1.1 599 \r\n"), "{unknown}");
    }

    #[test]
    fn numbers_without_a_formatter() {
        for n in [0u64, 7, 10, 999, 1_000_000, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0usize, 9, 10, 255, 4096, 0xdead_beef] {
            let mut out = BytesMut::new();
            put_chunk_size(&mut out, n);
            assert_eq!(out, format!("{n:x}\r\n").as_bytes());
        }
    }
}
