//! Writing a request head for a worker: the request line, the (already rewritten) header
//! fields and the body framing weir decides. Encoded once per request, so a retry or a replay on
//! a fresh connection resends the same bytes without copying the header map.

use std::io::Write;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::Method;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body and no framing field (GET, HEAD, DELETE... without a body).
    None,
    /// `Content-Length: n` (also `0` for methods that normally carry a body).
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a streamed body of unknown length.
    Chunked,
}

impl BodyFraming {
    /// The framing for a body of `known` length (`None` = unknown), for `method`, when the
    /// client sent a Content-Length field or not.
    pub fn choose(method: &Method, known: Option<u64>, client_sent_length: bool) -> Self {
        match known {
            Some(0) if !client_sent_length && !expects_body(method) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Chunked,
        }
    }
}

/// Methods whose requests normally carry a body: some servers refuse them without a length.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Serialize the head of `parts` with `framing`. Framing fields from the client
/// (Content-Length; Transfer-Encoding was stripped as hop-by-hop) are replaced by weir's own.
/// A request without Host gets an empty one, as HTTP/1.1 requires (RFC 9112 §3.2).
pub fn encode_head(parts: &Parts, framing: BodyFraming) -> Bytes {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(estimate(&parts.headers) + target.len() + 64);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: \r\n");
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The bytes of the header fields, so the head is written without reallocating.
fn estimate(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The chunk-size line for a chunk of `len` bytes: hex digits and CRLF.
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn encodes_line_fields_and_length() {
        let p = parts(
            Request::post("/submit?x=1")
                .header("host", "app.example")
                .header("content-length", "999")
                .header("x-trace", "abc")
                .body(())
                .unwrap(),
        );
        let head = encode_head(&p, BodyFraming::Length(3));
        assert_eq!(
            &head[..],
            b"POST /submit?x=1 HTTP/1.1\r\nhost: app.example\r\nx-trace: abc\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn missing_host_is_sent_empty_and_chunked_is_declared() {
        let p = parts(Request::put("/up").body(()).unwrap());
        let head = encode_head(&p, BodyFraming::Chunked);
        assert_eq!(
            &head[..],
            b"PUT /up HTTP/1.1\r\nhost: \r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn framing_choice() {
        assert_eq!(
            BodyFraming::choose(&Method::GET, Some(0), false),
            BodyFraming::None
        );
        assert_eq!(
            BodyFraming::choose(&Method::GET, Some(0), true),
            BodyFraming::Length(0)
        );
        assert_eq!(
            BodyFraming::choose(&Method::POST, Some(0), false),
            BodyFraming::Length(0)
        );
        assert_eq!(
            BodyFraming::choose(&Method::GET, Some(7), false),
            BodyFraming::Length(7)
        );
        assert_eq!(
            BodyFraming::choose(&Method::POST, None, false),
            BodyFraming::Chunked
        );
        assert_eq!(chunk_header(255), Bytes::from_static(b"ff\r\n"));
    }
}
